"""The ``regraft`` command. The only package that prints."""
