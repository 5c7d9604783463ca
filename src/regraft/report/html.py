"""``report.html``: one self-contained page per run folder.

The page holds everything it shows: PNGs as base64 data URIs, CSS inline, no script, no link to
any other file or host (a Content-Security-Policy forbids loading anything but inline images and
styles), so it can be mailed, attached to a ticket or opened years later. Only the files present
are shown; a missing optional file drops its section.

Example:
    >>> write_html_report("runs/exp1")   # doctest: +SKIP
    PosixPath('runs/exp1/report.html')
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from regraft.errors import RunError
from regraft.report import _sections as S
from regraft.report._data import data_findings
from regraft.report._timeline import timeline
from regraft.runs import RunDir, atomic_write_text

__all__ = ["write_html_report", "render_html_report"]

log = logging.getLogger(__name__)

# the figures a person looks at first, in this order, with their captions
HEADLINE_FIGURES = (
    ("curves.png", "loss and the primary figure (accuracy, or mAP for multi-label runs) on one epoch axis: "
                   "shaded spans are the training stages, the star marks the kept weights"),
    ("confusion_matrix.png", "confusion matrix on the validation split: counts and row-normalised"),
    ("top_losses.png", "the most confidently wrong validation images"),
)
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'none'"
_CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
header h1{margin:0 0 4px;font-size:26px} header p{margin:0;color:#555}
nav{margin:14px 0 8px;font-size:13px} nav a{margin-right:14px;color:#2456a6;text-decoration:none}
section{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:14px 20px;margin:18px 0}
h2{font-size:18px;margin:4px 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:10px}
.card{border:1px solid #e2e4e8;border-radius:6px;padding:10px 14px;min-width:150px;background:#fbfbfc}
.card .label{font-size:12px;color:#666}.card .value{font-size:22px;font-weight:600}.card .note{font-size:12px;color:#666}
figure{margin:8px 0 22px} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:13px} th,td{padding:4px 10px;text-align:left;vertical-align:top}
table.grid th{background:#f0f2f5;position:sticky;top:0} table.grid td{border-top:1px solid #eceef1;text-align:right;font-variant-numeric:tabular-nums}
table.grid td:first-child,table.grid td.text{text-align:left} tr.best td,tr.kept td{background:#e8f4e8;font-weight:600} p.note{font-size:13px;color:#555;margin:0 0 8px} tr.total td{border-top:2px solid #bbb;font-weight:600}
table.kv th{color:#555;font-weight:500;white-space:nowrap}
.scroll{overflow-x:auto;max-height:640px;overflow-y:auto}
pre{background:#f6f8fa;border:1px solid #e2e4e8;border-radius:6px;padding:10px;overflow-x:auto;font-size:12.5px}
details{margin:6px 0} summary{cursor:pointer;font-weight:500} ul{margin:4px 0 8px;columns:2;font-size:12.5px}
.coverage .bar{display:inline-block;width:220px;height:10px;background:#e6e8eb;border-radius:5px;margin-left:10px;vertical-align:middle}
.coverage .bar span{display:block;height:10px;background:#3b7dd8;border-radius:5px}
.empty{color:#888} footer{color:#888;font-size:12px;margin-top:26px}
"""


def write_html_report(run_dir: str | Path, *, path: str | Path | None = None) -> Path:
    """Write ``report.html`` for a run folder: summary, figures, config, load report, audit, metrics.

    Reads ``summary.json``, ``config.yaml``, ``metrics.csv``, ``load_report.json``,
    ``freeze_audit.json``, ``surgery.json`` and every ``*.png`` directly in ``run_dir``; any of
    them may be missing (its section is left out) or unreadable (its section says so).

    Args:
        run_dir: the run folder.
        path: where to write the page; defaults to ``run_dir/report.html``.

    Returns:
        The path written.

    Raises:
        RunError: ``run_dir`` is not a folder.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunError(f"run folder not found: {run}; pass the folder that 'regraft train --out' wrote")
    target = Path(path) if path is not None else run / "report.html"
    page = render_html_report(run)
    atomic_write_text(target, page)
    log.info("wrote %s (%d KiB)", target, len(page) // 1024)
    return target


def render_html_report(run_dir: str | Path) -> str:
    """The page :func:`write_html_report` writes, as a string (nothing is written)."""
    run = Path(run_dir)
    summary, summary_err = _read_json(run / "summary.json")
    if summary is not None and not isinstance(summary, Mapping):
        summary, summary_err = None, f'<p class="empty">summary.json holds a {type(summary).__name__}, not an object</p>'
    config_text = _read_text(run / "config.yaml")
    title, subtitle = _heading(run, summary or {}, config_text)
    parts: list[tuple[str, str, str]] = []  # (anchor, title, body)
    rows, metrics = _read_metrics(run, summary)
    if summary is not None or summary_err:
        parts.append(("summary", "Summary", summary_err or S.summary_cards(summary, kept=_kept_where(rows, summary))))
    for anchor, name, render in (("per-class", "Per class", S.per_class), ("per-label", "Per label", S.per_label)):
        body = render(summary) if summary is not None else None
        if body:
            parts.append((anchor, name, body))
    figures, others = _figures(run)
    if figures:
        parts.append(("figures", "Figures", figures))
    if others:
        parts.append(("plots", "All plots", others))
    if metrics is not None:
        parts.append(("metrics", "Metrics per epoch", metrics))
    _json_section(parts, run / "load_report.json", "load-report", "Load report", S.load_report, Mapping)
    _json_section(parts, run / "freeze_audit.json", "freeze-audit", "Freeze audit", S.freeze_audit, list)
    _json_section(parts, run / "surgery.json", "surgery", "Surgery", lambda d: S.pre(json.dumps(d, indent=2)), object)
    _json_section(parts, run / "data_findings.json", "data", "Data", data_findings, Mapping)
    if config_text is not None:
        parts.append(("config", "Config", S.pre(config_text)))
    return _page(title, subtitle, parts)


def _page(title: str, subtitle: str, parts: list[tuple[str, str, str]]) -> str:
    from regraft._version import __version__

    nav = " ".join(f'<a href="#{S.esc(anchor)}">{S.esc(name)}</a>' for anchor, name, _ in parts)
    sections = "\n".join(S.section(anchor, name, body) for anchor, name, body in parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{S.esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header><h1>{S.esc(title)}</h1><p>{S.esc(subtitle)}</p></header>\n<nav>{nav}</nav>\n"
        f"{sections}\n<footer>written by regraft {S.esc(__version__)}</footer>\n</main>\n</body>\n</html>\n"
    )


def _heading(run: Path, summary: Mapping[str, Any], config_text: str | None) -> tuple[str, str]:
    """Title "model · strategy" and a subtitle with weights, date and folder."""
    info = dict(_config_fields(config_text))
    info.update({k: v for k, v in summary.items() if k in ("model", "strategy", "weights") and v is not None})
    title = " · ".join(str(info[k]) for k in ("model", "strategy") if info.get(k)) or f"regraft run {run.name}"
    bits = [f"weights: {info['weights']}"] if info.get("weights") else []
    stamp = _date(run)
    if stamp:
        bits.append(stamp)
    bits.append(f"run folder: {run.name}")
    return title, " — ".join(bits)


def _config_fields(config_text: str | None) -> dict[str, Any]:
    if not config_text:
        return {}
    import yaml

    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError:
        return {}
    return {k: data.get(k) for k in ("model", "strategy", "weights")} if isinstance(data, dict) else {}


def _date(run: Path) -> str:
    """When the run finished: the time summary.json (else metrics.csv, config.yaml) was written."""
    for name in ("summary.json", "metrics.csv", "config.yaml"):
        p = run / name
        if p.is_file():
            when = datetime.fromtimestamp(p.stat().st_mtime, tz=timezone.utc)
            return when.strftime("%Y-%m-%d %H:%M UTC")
    return ""


def _figures(run: Path) -> tuple[str, str]:
    """The headline figures, then every other PNG in the folder (sorted by name)."""
    headline = dict(HEADLINE_FIGURES)
    first = [S.figure(name, png, headline[name]) for name, _ in HEADLINE_FIGURES if (png := _read_png(run / name))]
    rest = []
    for p in sorted(run.glob("*.png")):
        if p.name not in headline and (png := _read_png(p)):
            rest.append(S.figure(p.name, png, p.name))
    return "\n".join(first), "\n".join(rest)


def _read_png(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(S.PNG_MAGIC):
        log.warning("%s is not a PNG file; left out of the report", path)
        return None
    return data


def _json_section(parts: list[tuple[str, str, str]], path: Path, anchor: str, title: str, render: Any, kind: type) -> None:
    data, err = _read_json(path)
    if err:
        parts.append((anchor, title, err))
    elif data is not None:
        if isinstance(data, kind):
            parts.append((anchor, title, render(data)))
        else:
            parts.append((anchor, title, f'<p class="empty">{S.esc(path.name)} holds a {type(data).__name__}, not the expected {kind.__name__}</p>'))


def _read_json(path: Path) -> tuple[Any, str]:
    """(data, "") when readable; (None, an HTML note) when present but broken; (None, "") when absent."""
    if not path.is_file():
        return None, ""
    try:
        return json.loads(path.read_text(encoding="utf-8")), ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None, f'<p class="empty">could not read {S.esc(path.name)}: {S.esc(exc)}</p>'


def _read_metrics(run: Path, summary: Mapping[str, Any] | None) -> tuple[list[dict[str, Any]], str | None]:
    """The rows and their table; ``([], None)`` when there is no metrics.csv, a note when unreadable."""
    if not (run / "metrics.csv").is_file():
        return [], None
    try:
        rows = RunDir(run).read_metrics()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("cannot read %s: %s", run / "metrics.csv", exc)
        return [], f'<p class="empty">could not read metrics.csv: {S.esc(exc)}</p>'
    return rows, S.metrics_table(rows, summary=summary)


def _kept_where(rows: list[dict[str, Any]], summary: Mapping[str, Any] | None) -> str | None:
    """"epoch 3 of 5, fine-tune": where the kept weights are, as the metrics (not the summary) say."""
    if not rows:
        return None
    tl = timeline(rows, summary)
    if tl.kept is None or not tl.kept.recorded:
        return None
    return tl.label(tl.kept.index, of=(summary or {}).get("epochs") if not tl.restarted else None)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
