"""Training: a validated Config in, a finished run folder out.

``run`` holds the sequence, ``setup`` its typed steps, ``loop`` the one training loop every stage
uses; ``lr_find`` and ``compare`` build on them.
"""
