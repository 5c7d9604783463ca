"""The "data" section of report.html: what ``RUN/data_findings.json`` holds (regraft.audit.findings).

Suspected label errors and near-duplicates across train and validation found on the run's
cached features, as two tables; every value from the file is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from regraft.report._sections import esc

__all__ = ["data_findings"]


def data_findings(data: Mapping[str, Any]) -> str:
    """The section body for a parsed ``data_findings.json``."""
    issues, leaks = _records(data.get("label_issues")), _records(data.get("leaks"))
    n_issues, n_leaks = _count(data.get("label_issues_total"), len(issues)), _count(data.get("leaks_total"), len(leaks))
    probe = data.get("probe") if isinstance(data.get("probe"), Mapping) else {}
    head = (f"<p>{esc(data.get('images', '?'))} images, judged by cross-validated linear probes on the run's cached "
            f"features ({esc(probe.get('validation', '?'))} accuracy {_num(probe.get('accuracy'))}); "
            f"{n_issues} suspected label error{'' if n_issues == 1 else 's'}, {n_leaks} near-duplicate "
            f"pair{'' if n_leaks == 1 else 's'} across train and validation (judged by {esc(data.get('duplicates_by', '?'))}). "
            "<code>regraft scan DATA --model M --html OUT</code> shows them with thumbnails.</p>")
    parts = [head]
    if issues:
        rows = "".join(
            f"<tr><td>{_num(i.get('score'))}</td><td class=\"text\">{esc(i.get('split', ''))}</td><td class=\"text\">{esc(i.get('given', ''))}</td>"
            f"<td class=\"text\">{esc(i.get('suggested', ''))}</td><td class=\"text\">{esc(i.get('path', ''))}</td></tr>" for i in issues)
        parts.append('<h3>Suspected label errors</h3><div class="scroll"><table class="grid"><tr><th>score</th><th>split</th>'
                     f"<th>filed as</th><th>looks like</th><th>path</th></tr>{rows}</table></div>")
    if leaks:
        rows = "".join(
            f"<tr><td>{_num(p.get('similarity'))}</td><td class=\"text\">{esc(p.get('a', ''))}</td><td class=\"text\">{esc(p.get('b', ''))}</td></tr>"
            for p in leaks)
        parts.append('<h3>Near-duplicates across train and validation</h3><div class="scroll"><table class="grid">'
                     f"<tr><th>similarity</th><th>image</th><th>its copy</th></tr>{rows}</table></div>")
    if n_issues > len(issues) or n_leaks > len(leaks):
        parts.append(f'<p class="empty">the file keeps the first {len(issues)} and {len(leaks)}; the scan lists all</p>')
    return "\n".join(parts)


def _records(value: Any) -> list[Mapping[str, Any]]:
    """The file's list of objects; anything else in it (a run folder from elsewhere) is left out."""
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _count(value: Any, at_least: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= at_least else at_least


def _num(value: Any) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "—"
