"""regraft.audit: label issues, near-duplicates and outliers from embeddings, the fix rows, the page.

The analysis is tested on constructed embeddings (classes as clusters, planted wrong labels,
copies and outliers) so that what is planted is known exactly; test_scan.py drives the same
code through ``regraft scan --model`` on image folders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regraft.audit.analysis import analyse
from regraft.audit.duplicates import NearDuplicate, clusters, find_near_duplicates
from regraft.audit.labels import CLEANLAB, CONFIDENT_JOINT
from regraft.audit.outliers import FAR, FLAT
from regraft.audit.scan import fix_rows
from regraft.data.phash import Fingerprint
from regraft.errors import DataError

CLASSES = ("ant", "bee", "cat", "dog")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core test machine: see test_linear_probe.py
    yield
    torch.set_num_threads(before)


def _print(rng: np.random.Generator, detail: float = 40.0) -> Fingerprint:
    return Fingerprint(int(rng.integers(0, 2**63)), detail, (int(rng.integers(0, 2**63)), int(rng.integers(0, 2**63))))


def _near(fp: Fingerprint, bits: int) -> Fingerprint:
    return Fingerprint(fp.hash ^ ((1 << bits) - 1), fp.detail, fp.centre)


@pytest.fixture(scope="module")
def planted() -> dict:
    """160 images in 4 clustered classes; 8 wrong labels, 3 copies (2 across splits), 1 far outlier, 1 blank."""
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    d, per = 32, 40
    centres = torch.randn(len(CLASSES), d, generator=g) * 4
    labels = torch.arange(len(CLASSES)).repeat_interleave(per)
    x = centres[labels] + torch.randn(len(labels), d, generator=g)
    n = len(labels)
    paths = [f"/data/{'val' if i % 5 == 0 else 'train'}/{CLASSES[int(labels[i])]}/img{i:03d}.jpg" for i in range(n)]
    splits = ["val" if i % 5 == 0 else "train" for i in range(n)]
    prints = [_print(rng) for _ in range(n)]
    wrong = [3, 21, 47, 66, 88, 101, 127, 150]
    given = labels.clone()
    for i in wrong:
        given[i] = (labels[i] + 1 + i % 3) % len(CLASSES)
    copies = [(10, 11), (52, 53), (120, 122)]  # 10 (val) ~ 11 (train), 120 (val) ~ 122: leaks; 52 ~ 53 in train
    for a, b in copies:
        x[b] = x[a] + 0.05 * torch.randn(d, generator=g)
        prints[b] = _near(prints[a], 3)
    x[140] = torch.randn(d, generator=g) * 0.5 - 30.0  # far from everything
    x[141] = x.mean(dim=0) + 0.01 * torch.randn(d, generator=g)  # a blank frame: like nothing in particular ...
    prints[141] = Fingerprint(prints[141].hash, 1.5, prints[141].centre)  # ... and near-uniform
    return {"x": x, "labels": given, "truth": labels, "paths": paths, "splits": splits, "prints": prints,
            "wrong": wrong, "copies": copies}


@pytest.fixture(scope="module")
def result(planted):
    return analyse(planted["x"], planted["labels"], classes=CLASSES, paths=planted["paths"], splits=planted["splits"],
                   fingerprints=planted["prints"])


def test_planted_wrong_labels_are_found_and_ranked_first(planted, result):
    wrong = {planted["paths"][i] for i in planted["wrong"]}
    flagged = [i.path for i in result.label_issues]
    assert set(flagged[: len(wrong)]) == wrong
    assert len(flagged) <= len(wrong) + 1  # the far outlier may be doubted too, nothing else
    for issue in result.label_issues[: len(wrong)]:
        i = planted["paths"].index(issue.path)
        assert issue.given == CLASSES[int(planted["labels"][i])] and issue.suggested == CLASSES[int(planted["truth"][i])]
        assert issue.score > 0.5 and abs(issue.score - (1 - issue.given_probability)) < 1e-4
    scores = [i.score for i in result.label_issues]
    assert scores == sorted(scores, reverse=True)
    assert result.probe["validation"] == "cv5" and result.probe["passes"] == 2
    assert result.method == CLEANLAB


def test_without_cleanlab_the_confident_joint_finds_them_too(planted):
    out = analyse(planted["x"], planted["labels"], classes=CLASSES, paths=planted["paths"], splits=planted["splits"],
                  fingerprints=planted["prints"], method="confident-joint")
    assert out.method == CONFIDENT_JOINT
    assert {planted["paths"][i] for i in planted["wrong"]} <= {i.path for i in out.label_issues}


def test_planted_copies_are_the_only_pairs_and_leaks_come_first(planted, result):
    paths = planted["paths"]
    expected = {frozenset((paths[a], paths[b])) for a, b in planted["copies"]}
    assert {frozenset((p.a, p.b)) for p in result.near_duplicates} == expected
    assert [p.leak for p in result.near_duplicates] == [True, True, False]
    assert all(p.hash_distance == 3 and p.similarity > 0.99 for p in result.near_duplicates)
    assert result.problems()[1] == "2 near-duplicate pairs across train and validation (leakage)"


def test_pairs_need_both_hash_and_features_and_no_blank_image(planted):
    x, paths, prints = planted["x"], planted["paths"], list(planted["prints"])
    common = dict(paths=paths, splits=planted["splits"], labels=["c"] * len(paths))
    prints[11] = _near(prints[10], 12)  # hashes too far apart
    prints[53] = Fingerprint(prints[53].hash, 2.0, prints[53].centre)  # a near-uniform image
    prints[30] = _near(prints[70], 2)  # hashes close, features of two different images
    found = {frozenset((p.a, p.b)) for p in find_near_duplicates(x, fingerprints=prints, **common)}
    assert found == {frozenset((paths[120], paths[122]))}
    skipped = find_near_duplicates(x, fingerprints=prints, skip={frozenset((paths[120], paths[122]))}, **common)
    assert skipped == []
    # features alone (a training run's cache): the copies are found, but tight clusters pair up too
    features_only = find_near_duplicates(x, **common)
    copies = {frozenset((paths[a], paths[b])) for a, b in planted["copies"]}
    assert copies <= {frozenset((p.a, p.b)) for p in features_only}
    weakest_copy = min(p.similarity for p in features_only if frozenset((p.a, p.b)) in copies)
    assert all(p.similarity < weakest_copy for p in features_only if frozenset((p.a, p.b)) not in copies)


def test_outliers_are_the_far_image_and_the_blank_one(planted, result):
    assert [(o.path, o.reason) for o in result.outliers] == [(planted["paths"][141], FLAT), (planted["paths"][140], FAR)]


def test_copies_share_a_fold_so_a_twin_cannot_vouch_for_a_wrong_label(planted):
    pair = NearDuplicate("a", "b", 0.99, 1, "train", "val", "cat", "cat")
    assert clusters([pair], ["x", "a", "y", "b"]).tolist() == [0, 3, 2, 3]
    x, labels = planted["x"].clone(), planted["labels"].clone()
    paths, prints = planted["paths"], list(planted["prints"])
    x[61], prints[61] = x[47] + 0.01, _near(prints[47], 1)  # a copy of wrongly labelled image 47 ...
    labels[61] = labels[47]  # ... filed under the same wrong class
    out = analyse(x, labels, classes=CLASSES, paths=paths, splits=planted["splits"], fingerprints=prints)
    assert {paths[47], paths[61]} <= {i.path for i in out.label_issues}


def test_the_json_contract_and_the_fix_rows(planted, result):
    data = result.to_dict()
    assert set(data) == {"label_issues", "near_duplicates", "outliers", "deep_scan"}
    assert set(data["label_issues"][0]) == {"path", "split", "given", "suggested", "score", "given_probability",
                                            "suggested_probability"}
    assert set(data["near_duplicates"][0]) == {"a", "b", "similarity", "hash_distance", "split_a", "split_b",
                                               "label_a", "label_b", "leak", "same_label"}
    assert set(data["outliers"][0]) == {"path", "split", "label", "score", "reason"}
    rows = {r.path: r for r in fix_rows(result)}
    first = result.label_issues[0]
    assert rows[first.path].action == "exclude" and rows[first.path].suggested == first.suggested
    leak = result.near_duplicates[0]
    val_copy = leak.a if leak.split_a == "val" else leak.b
    assert rows[val_copy].action == "exclude" and "leak" in rows[val_copy].reason
    assert rows[planted["paths"][141]].action == "keep"


def test_bad_input_raises(planted):
    with pytest.raises(DataError, match="one label, path, split .* per image; got 160 feature rows"):
        analyse(planted["x"], planted["labels"][:10], classes=CLASSES, paths=planted["paths"], splits=planted["splits"])
    with pytest.raises(DataError, match="at least 2 images in at least 2 classes"):
        analyse(planted["x"][:3], torch.zeros(3, dtype=torch.long), classes=CLASSES, paths=["a", "b", "c"],
                splits=["train"] * 3)


def test_the_page_embeds_thumbnails_and_escapes_names(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from regraft.audit.analysis import DeepScan
    from regraft.audit.labels import LabelIssue
    from regraft.audit.outliers import Outlier
    from regraft.audit.page import render_scan_page

    files = []
    for i in range(4):
        path = tmp_path / "data" / "train" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (300, 200), (40 * i, 90, 200)).save(path)
        files.append(str(path))
    evil = "<script>cat</script>"
    result = DeepScan(
        [LabelIssue(files[0], "train", evil, "dog", 0.93, 0.07, 0.9)],
        [NearDuplicate(files[1], files[2], 0.98, 2, "train", "val", "dog", "dog")],
        [Outlier(str(tmp_path / "gone.png"), "val", "dog", 0.9, FAR)],
        CLEANLAB, {"validation": "cv5", "accuracy": 0.9, "accuracy_std": 0.05}, 4,
        model={"name": "timm:test_resnet", "weights": "none"}, exemplars={evil: [files[3]], "dog": [files[1]]},
    )
    report = SimpleNamespace(root=str(tmp_path / "data"), problems=["1 unusable file (1 empty)"])
    page = render_scan_page(report, result)
    assert evil not in page and "&lt;script&gt;cat&lt;/script&gt;" in page
    assert page.count('src="data:image/jpeg;base64,') == 5  # suspect, 2 exemplars, the pair (img1 twice)
    assert "(unreadable)" in page and "leak: train ↔ validation" in page and "1 unusable file (1 empty)" in page
    assert ">train/img0.png<" in page  # captions under the data folder
    assert "default-src 'none'" in page and "<script" not in page.replace("&lt;script", "")


def test_run_findings_feed_the_report_data_section(planted, tmp_path):
    import json

    from regraft.audit.findings import FINDINGS_FILE, run_findings, summary_counts
    from regraft.report import render_html_report

    train = [i for i, s in enumerate(planted["splits"]) if s == "train"]
    val = [i for i, s in enumerate(planted["splits"]) if s == "val"]
    names = ["<b>" + c + "</b>" for c in CLASSES]
    x, y, paths = planted["x"], planted["labels"], planted["paths"]
    findings = run_findings(x[train], y[train], x[val], y[val], classes=names, train_paths=[paths[i] for i in train],
                            val_paths=[paths[i] for i in val], top=5)
    assert findings["label_issues_total"] >= len(planted["wrong"]) and len(findings["label_issues"]) == 5
    assert {i["path"] for i in findings["label_issues"]} <= {paths[i] for i in planted["wrong"]}
    assert findings["duplicates_by"] == "features only" and findings["images"] == len(paths)
    assert {frozenset((p["a"], p["b"])) for p in findings["leaks"]} >= {frozenset((paths[10], paths[11])),
                                                                        frozenset((paths[120], paths[122]))}
    assert summary_counts(findings) == {"label_issues": findings["label_issues_total"], "leaks": findings["leaks_total"]}
    run = tmp_path / "run"
    run.mkdir()
    (run / FINDINGS_FILE).write_text(json.dumps(findings))
    page = render_html_report(run)
    assert '<section id="data">' in page and "Suspected label errors" in page and "across train and validation" in page
    assert "<b>ant</b>" not in page and "&lt;b&gt;ant&lt;/b&gt;" in page
    with pytest.raises(DataError, match="one path per cached row"):
        run_findings(x[train], y[train], x[val], y[val], classes=names, train_paths=[], val_paths=[])


def test_a_blatant_contradiction_is_flagged_even_below_the_class_threshold():
    from regraft.audit.labels import flag_label_issues

    p = np.full((20, 2), 0.0005)
    p[:10, 0], p[10:, 1] = 0.9995, 0.9995  # the probes are sure of every image ...
    p[3] = [0.04, 0.96]  # ... and of this one, filed as 0, being a 1 (below class 1's mean of 0.9995)
    p[5] = [0.2, 0.8]  # doubtful, not blatant
    labels = np.array([0] * 10 + [1] * 10)
    found, _ = flag_label_issues(p, labels, method="confident-joint")
    assert found.tolist() == [3]
    assert flag_label_issues(p, labels, judged=np.arange(20) != 3, method="confident-joint")[0].tolist() == []


def test_near_uniform_images_are_outliers_unless_their_class_is_dark(planted):
    from regraft.audit.outliers import find_outliers

    names = [CLASSES[int(c)] for c in planted["labels"]]
    dark = {i for i, name in enumerate(names) if name == "ant"}
    prints = [Fingerprint(f.hash, 2.0 if i in dark or i == 100 else f.detail, f.centre) for i, f in enumerate(planted["prints"])]
    out = find_outliers(planted["x"], paths=planted["paths"], splits=planted["splits"], labels=names, fingerprints=prints)
    flagged = {o.path for o in out if o.reason == FLAT}
    assert flagged == {planted["paths"][100], planted["paths"][141]}  # not the 40 dark ants


def test_features_only_a_crowd_of_look_alikes_does_not_flood_but_its_exact_copy_is_found():
    """Without hashes, ten look-alikes (all within 0.97 of each other) give no pair; an exact
    copy of one of them is still one pair, and a lone near-copy elsewhere too."""
    from regraft.audit.duplicates import find_near_duplicates

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(20, 64, generator=g) * 3
    crowd = torch.randn(1, 64, generator=g) * 3 + 0.4 * torch.randn(10, 64, generator=g)  # similarity ~0.98
    x = torch.cat([spread, crowd, crowd[:1], spread[:1] + 0.01 * torch.randn(1, 64, generator=g)])
    paths = [f"img{i:02d}.png" for i in range(len(x))]
    pairs = find_near_duplicates(x, paths=paths, splits=["train"] * len(x), labels=["a"] * len(x))
    found = {frozenset((p.a, p.b)) for p in pairs}
    assert found == {frozenset(("img20.png", "img30.png")), frozenset(("img00.png", "img31.png"))}


def test_a_big_cluster_of_look_alikes_is_not_one_cross_validation_group():
    from regraft.audit.analysis import MAX_GROUP, _copy_groups

    group = np.array([0] * (MAX_GROUP + 3) + [9, 9, 10])
    out = _copy_groups(group)
    assert len(set(out[: MAX_GROUP + 3].tolist())) == MAX_GROUP + 3  # folded one by one
    assert out[-3] == out[-2] != out[-1]  # a pair of copies stays together
    assert len(set(out.tolist())) == len(out) - 1


def test_cleanlab_is_not_imported_when_the_confident_joint_has_nothing_off_its_diagonal():
    """On clean evidence cleanlab would flag nothing: it is not even imported (a run's findings
    on clean data stay cheap); with a confident contradiction it ranks as before."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from regraft.audit.labels import flag_label_issues\n"
        "p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]]); y = np.array([0, 0, 1, 1])\n"
        "found, name = flag_label_issues(p, y, method='cleanlab')\n"
        "assert len(found) == 0 and 'cleanlab' in name and 'cleanlab' not in sys.modules, sys.modules.get('cleanlab')\n"
        "p2 = np.array([[0.9, 0.1]] * 6 + [[0.1, 0.9]] * 6 + [[0.95, 0.05]]); y2 = np.array([0] * 6 + [1] * 7)\n"
        "found, _ = flag_label_issues(p2, y2, method='cleanlab')\n"
        "assert list(found) == [12] and 'cleanlab' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
