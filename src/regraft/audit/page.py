"""``regraft scan --html OUT``: the deep scan's findings as one self-contained page of thumbnails.

Like report.html, the page holds everything it shows: thumbnails as base64 JPEG data URIs, CSS
inline, no script, and a Content-Security-Policy that forbids loading anything else, so it can
be mailed or attached to a ticket. Every value from the data folder (paths, class names) is
escaped. A suspected label error sits between typical images of its given class and of the
suggested one; a near-duplicate pair side by side; outliers in a row.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regraft.audit.analysis import DeepScan
from regraft.report._sections import esc

__all__ = ["render_scan_page", "write_scan_page", "THUMB"]

log = logging.getLogger(__name__)

THUMB = 128  # longest side of a thumbnail, pixels
SHOWN = 100  # findings of each kind on the page (all of them are in --json)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'"
_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{margin:0 0 4px;font-size:26px} header p{margin:0;color:#555}
section{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:14px 20px;margin:18px 0}
h2{font-size:18px;margin:4px 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0 4px}
.card{border:1px solid #e2e4e8;border-radius:6px;padding:10px 14px;min-width:150px;background:#fff}
.card .label{font-size:12px;color:#666}.card .value{font-size:22px;font-weight:600}.card .note{font-size:12px;color:#666}
.item{display:flex;flex-wrap:wrap;align-items:flex-start;gap:18px;padding:12px 0;border-top:1px solid #eceef1}
.item:first-of-type{border-top:none}
.group{display:flex;flex-direction:column;gap:4px}
.group .title{font-size:12px;color:#555}.group .row{display:flex;gap:4px}
.main img{outline:3px solid #d9534f;outline-offset:-3px}
img{display:block;height:112px;width:auto;max-width:168px;object-fit:contain;border-radius:3px;background:#eee;image-rendering:auto}
.small img{height:60px;max-width:90px}
.meta{font-size:12.5px;color:#333;max-width:360px;word-break:break-all}
.meta b{font-weight:600}.score{font-size:20px;font-weight:600}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;border-radius:9px;background:#fde2e1;color:#a12622;margin-right:6px}
.badge.ok{background:#e6f0fa;color:#2456a6}
.tiles{display:flex;flex-wrap:wrap;gap:14px}.tile{width:150px;font-size:12px;word-break:break-all}
ul{margin:4px 0 8px;font-size:13px}.empty{color:#888} footer{color:#888;font-size:12px;margin-top:26px}
"""


def write_scan_page(path: str | Path, report: Any, result: DeepScan) -> Path:
    """Write the page for a scan report and its deep scan. Returns the path written."""
    from regraft.runs import atomic_write_text

    page = render_scan_page(report, result)
    target = Path(path)
    atomic_write_text(target, page)
    log.info("wrote %s (%d KiB)", target, len(page) // 1024)
    return target


def render_scan_page(report: Any, result: DeepScan) -> str:
    """The page as a string (reads the thumbnails' image files, writes nothing)."""
    thumbs = _Thumbnails(root=report.root)
    probe = result.probe
    head = (f"{result.images} images embedded with {esc(result.model.get('name', '?'))} "
            f"({esc(result.model.get('weights', ''))}); a cross-validated linear probe on them scores "
            f"{probe.get('accuracy', float('nan')):.3f} ± {probe.get('accuracy_std', float('nan')):.3f} ({esc(probe.get('validation', ''))})")
    cards = "".join(
        f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{value}</div><div class="note">{esc(note)}</div></div>'
        for label, value, note in (
            ("suspected label errors", len(result.label_issues), result.method),
            ("leaks (train ↔ validation)", len(result.leaks), "near-duplicate pairs across splits"),
            ("near-duplicate pairs", len(result.near_duplicates), "resized, re-encoded or cropped copies"),
            ("outliers", len(result.outliers), "far from every other image, or blank"),
            ("byte-level problems", len(report.problems), "unreadable files, identical copies, ..."),
        )
    )
    sections = [
        _section("label-issues", "Suspected label errors", _label_issues(result, thumbs)),
        _section("near-duplicates", "Near-duplicates", _duplicates(result, thumbs)),
        _section("outliers", "Outliers", _outliers(result, thumbs)),
        _section("problems", "All problems", _problems(report, result)),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>regraft scan: {esc(report.root)}</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>Deep scan of {esc(report.root)}</h1><p>{head}</p></header>"
        f'<div class="cards">{cards}</div>' + "\n".join(sections) +
        "<footer>written by regraft scan; every thumbnail is inside this file</footer></main></body></html>\n"
    )


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def _more(total: int) -> str:
    return f'<p class="empty">... and {total - SHOWN} more (all of them in --json)</p>' if total > SHOWN else ""


def _label_issues(result: DeepScan, thumbs: _Thumbnails) -> str:
    if not result.label_issues:
        return '<p class="empty">none: every image agrees with its label</p>'
    items = []
    for issue in result.label_issues[:SHOWN]:
        items.append(
            '<div class="item">'
            f'<div class="group main"><div class="title">this image, filed as <b>{esc(issue.given)}</b></div>{thumbs.img(issue.path)}</div>'
            f'<div class="meta"><div class="score">{issue.score:.2f}</div>'
            f"p({esc(issue.given)}) = {issue.given_probability:.2f}, p({esc(issue.suggested)}) = {issue.suggested_probability:.2f}"
            f'<br><span class="badge ok">{esc(issue.split)}</span>{thumbs.name(issue.path)}</div>'
            + _exemplars(f"typical {issue.given} (given)", result.exemplars.get(issue.given, []), thumbs)
            + _exemplars(f"typical {issue.suggested} (suggested)", result.exemplars.get(issue.suggested, []), thumbs)
            + "</div>"
        )
    return "".join(items) + _more(len(result.label_issues))


def _exemplars(title: str, paths: Sequence[str], thumbs: _Thumbnails) -> str:
    row = "".join(thumbs.img(p) for p in paths) or '<span class="empty">no typical image</span>'
    return f'<div class="group small"><div class="title">{esc(title)}</div><div class="row">{row}</div></div>'


def _duplicates(result: DeepScan, thumbs: _Thumbnails) -> str:
    if not result.near_duplicates:
        return '<p class="empty">none found</p>'
    items = []
    for pair in result.near_duplicates[:SHOWN]:
        badges = ('<span class="badge">leak: train ↔ validation</span>' if pair.leak else "") + (
            "" if pair.same_label else '<span class="badge">different classes</span>')
        distance = "" if pair.hash_distance is None else f", hash distance {pair.hash_distance}/64"
        items.append(
            '<div class="item">'
            f'<div class="group"><div class="title">{esc(pair.split_a)} / {esc(pair.label_a)}</div>{thumbs.img(pair.a)}</div>'
            f'<div class="group"><div class="title">{esc(pair.split_b)} / {esc(pair.label_b)}</div>{thumbs.img(pair.b)}</div>'
            f'<div class="meta">{badges}<br>similarity {pair.similarity:.3f}{distance}<br>{thumbs.name(pair.a)}<br>{thumbs.name(pair.b)}</div>'
            "</div>"
        )
    return "".join(items) + _more(len(result.near_duplicates))


def _outliers(result: DeepScan, thumbs: _Thumbnails) -> str:
    if not result.outliers:
        return '<p class="empty">none found</p>'
    tiles = "".join(
        f'<div class="tile">{thumbs.img(o.path)}<b>{o.score:.2f}</b> {esc(o.reason)}<br>{esc(o.split)} / {esc(o.label)}<br>{thumbs.name(o.path)}</div>'
        for o in result.outliers[:SHOWN]
    )
    return f'<div class="tiles">{tiles}</div>' + _more(len(result.outliers))


def _problems(report: Any, result: DeepScan) -> str:
    lines = list(report.problems) + result.problems()
    if not lines:
        return '<p class="empty">no problems found</p>'
    return "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>"


class _Thumbnails:
    """Each image's thumbnail once, as an ``<img>`` with a JPEG data URI (alt: the path);
    :meth:`name` shortens a path to the part under the data folder for the captions."""

    def __init__(self, *, root: str) -> None:
        self._uri: dict[str, str] = {}
        self._root = root.rstrip("/\\") + "/"

    def name(self, path: str) -> str:
        return esc(path[len(self._root):] if path.startswith(self._root) else path)

    def img(self, path: str) -> str:
        if path not in self._uri:
            self._uri[path] = _data_uri(path)
        uri = self._uri[path]
        if not uri:
            return f'<span class="empty" title="{esc(path)}">(unreadable)</span>'
        return f'<img alt="{esc(path)}" title="{esc(path)}" src="{uri}">'


def _data_uri(path: str) -> str:
    from regraft.data import load_image

    try:
        image = load_image(path)
    except Exception as exc:  # a file that changed since the scan must not cost the page
        log.warning("no thumbnail for %s: %s", path, exc)
        return ""
    image.thumbnail((THUMB, THUMB))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
