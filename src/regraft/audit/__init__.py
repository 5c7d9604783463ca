"""The deep scan: label issues, near-duplicates and outliers from one embedding per image.

``regraft scan DATA --model M`` embeds every readable image once (:mod:`~regraft.audit.embed`,
stored by content hash) and :func:`analyse` looks at the embeddings: out-of-fold probabilities
of cross-validated linear probes for label issues (:mod:`~regraft.audit.labels`), perceptual
hashes confirmed by features for near-duplicates (:mod:`~regraft.audit.duplicates`), isolation
in feature space for outliers (:mod:`~regraft.audit.outliers`). :mod:`~regraft.audit.page`
draws the findings, :func:`fix_rows` turns them into the fix loop's CSV (``regraft.data.fixes``).
docs/scan.md has the rules and what they measured.

Example:
    >>> from regraft.data import scan
    >>> report = scan("data/pets", fingerprints=True)                        # doctest: +SKIP
    >>> result = deep_scan(report, model="resnet50")                         # doctest: +SKIP
    >>> [(i.path, i.given, i.suggested) for i in result.label_issues[:3]]    # doctest: +SKIP
"""

from regraft.audit.analysis import DeepScan, analyse
from regraft.audit.duplicates import DuplicateRule, NearDuplicate, find_near_duplicates
from regraft.audit.labels import LabelIssue, find_label_issues
from regraft.audit.outliers import Outlier, find_outliers
from regraft.audit.scan import deep_scan, fix_rows

__all__ = [
    "analyse", "DeepScan", "deep_scan", "fix_rows", "LabelIssue", "find_label_issues", "NearDuplicate",
    "find_near_duplicates", "DuplicateRule", "Outlier", "find_outliers",
]
