"""HTML fragments for report.html: one function per section, every value escaped.

Each renderer takes already-parsed data and returns an HTML string; none reads files. Values
from the run folder are data, so everything goes through :func:`esc` (class names, config
values and key names included).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from regraft.report._timeline import primary_of, stage_name, timeline, validation_of

__all__ = [
    "esc", "section", "summary_cards", "figure", "load_report", "freeze_audit", "metrics_table",
    "pre", "key_values", "PNG_MAGIC", "per_class", "per_label",
]  # fmt: skip

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_OPEN_LIST_MAX = 10  # longer lists of keys start collapsed
_INT_COLUMNS = ("trainable_params", "frozen_params", "params")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def figure(name: str, png: bytes, caption: str) -> str:
    """An ``<img>`` with the PNG inline as a base64 data URI, so the page needs no other file."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def summary_cards(summary: Mapping[str, Any], *, kept: str | None = None) -> str:
    """The run's headline figures as a row of cards, then every summary field collapsed.

    Args:
        summary: the run's ``summary.json``.
        kept: where the kept weights are ("epoch 3, fine-tune"), as read from the metrics;
            defaults to the summary's ``best_epoch``/``best_stage``.
    """
    cards = []
    key = primary_of(summary)
    best = summary.get(f"best_{key}")
    validation = validation_of(summary)
    name = validation.figure
    if best is not None:
        where = kept or _kept_where(summary)
        if validation.cross_validated:
            spread = f" ± {_pct(validation.std)}" if not math.isnan(validation.std) else ""
            cards.append((f"cross-validated {name}", _pct(best) + spread, f"{validation.folds}-fold; kept weights: {where}"))
        else:
            cards.append((f"val {name}, kept weights", _pct(best), where))
    if summary.get(f"final_{key}") is not None:
        cards.append((f"final val {name}", _pct(summary[f"final_{key}"]), "last epoch"))
    if summary.get("best_val_balanced_acc") is not None:
        cards.append(("balanced accuracy", _pct(summary["best_val_balanced_acc"]), "mean recall over classes, kept weights"))
    if summary.get("f1_macro_at_thresholds") is not None:
        cards.append(("macro F1", _pct(summary["f1_macro_at_thresholds"]),
                      f"at the per-label thresholds; micro {_pct(summary.get('f1_micro_at_thresholds'))}"))
    if summary.get("best_val_loss") is not None:
        cards.append(("val loss", _num(summary["best_val_loss"], "loss"), "best weights"))
    balance = summary.get("balance")
    if isinstance(balance, Mapping) and balance.get("mode") is not None:
        ratio = _float(balance.get("imbalance"))
        cards.append(("balance", esc(balance["mode"]), f"imbalance {ratio:.1f}x" if not math.isnan(ratio) else ""))
    if summary.get("train_seconds") is not None:
        cards.append(("training time", _duration(summary["train_seconds"]), _rate(summary.get("images_per_sec"))))
    if summary.get("trainable_params") is not None:
        total = summary.get("total_params")
        share = f"of {_num(total, 'count')} ({_share(summary['trainable_params'], total)})" if total else ""
        cards.append(("trainable params", _num(summary["trainable_params"], "count"), share))
    if summary.get("trunk_coverage") is not None:
        cards.append(("trunk from weights", _pct(summary["trunk_coverage"]), str(summary.get("weights", ""))))
    classes = summary.get("classes") or []
    if classes or summary.get("num_classes") is not None:
        cards.append(("classes", esc(summary.get("num_classes", len(classes))), _preview(classes)))
    body = "".join(
        f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{value}</div>'
        f'<div class="note">{esc(note)}</div></div>'
        for label, value, note in cards
    )
    return f'<div class="cards">{body}</div>\n' + _details("all summary fields", key_values(summary), open_=False)


def key_values(data: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{_value(v)}</td></tr>" for k, v in data.items())
    return f'<table class="kv">{rows}</table>'


def load_report(report: Mapping[str, Any]) -> str:
    """``LoadReport.to_dict()``: coverage as a bar, the scalar fields as a table, then each
    collection of keys (lists, and mappings such as ``renamed`` shown as ``old → new``) as a
    list that starts collapsed when long."""
    parts = []
    if "coverage" in report:
        cov = report["coverage"]
        of = ""
        if report.get("trunk_params"):
            of = f" ({_num(report.get('trunk_params_loaded'), 'count')} of {_num(report['trunk_params'], 'count')} trunk parameters)"
        parts.append(f'<p class="coverage">trunk coverage <strong>{_pct(cov)}</strong>{esc(of)}{_bar(cov)}</p>')
    scalars = {k: v for k, v in report.items() if not isinstance(v, (list, Mapping)) and k != "coverage" and v is not None}
    if scalars:
        parts.append(key_values(scalars))
    for name, items in report.items():
        if name == "counts" or not isinstance(items, (list, Mapping)):
            continue  # counts repeat the lengths shown in each title
        entries = [f"{k} → {_item(v)}" for k, v in items.items()] if isinstance(items, Mapping) else [_item(it) for it in items]
        title = f"{name} ({len(entries)})"
        if not entries:
            parts.append(f'<p class="empty">{esc(title)}</p>')
            continue
        body = "<ul>" + "".join(f"<li><code>{esc(e)}</code></li>" for e in entries) + "</ul>"
        parts.append(_details(title, body, open_=len(entries) <= _OPEN_LIST_MAX))
    return "\n".join(parts)


def freeze_audit(rows: Sequence[Mapping[str, Any]]) -> str:
    """The audit rows as a table, with a total of trainable and frozen parameters."""
    table = _table(rows, numeric_total=("trainable_params", "frozen_params"))
    return table if rows else '<p class="empty">no parameter groups recorded</p>'


def metrics_table(rows: Sequence[Mapping[str, Any]], *, summary: Mapping[str, Any] | None = None) -> str:
    """One row per evaluation, in time order; the row whose weights were kept highlighted.

    The kept row is the ``kept`` column's, else the one ``summary`` names (older runs); a run
    that recorded neither has its highest validation accuracy highlighted, and the note says so.
    """
    if not rows:
        return '<p class="empty">metrics.csv has no rows</p>'
    tl = timeline(rows, summary)
    kept = tl.kept
    notes = []
    if kept is not None and kept.recorded:
        notes.append(f"Highlighted: the row whose weights are model.safetensors ({tl.label(kept.index)}).")
    elif kept is not None:
        notes.append(f"Highlighted: the highest validation accuracy ({tl.label(kept.index)}); this run did not record which weights it kept.")
    if tl.restarted:
        notes.append("This older run numbered each stage's epochs from 1.")
    note = f'<p class="note">{esc(" ".join(notes))}</p>' if notes else ""
    return note + _table(rows, highlight=kept.index if kept else None, highlight_class="kept" if kept and kept.recorded else "best")


def per_class(summary: Mapping[str, Any]) -> str | None:
    """Each class's recall on the validation images (the kept weights), lowest first: where imbalance hurts."""
    recall = summary.get("per_class_recall")
    if not isinstance(recall, Mapping) or not recall:
        return None
    rows = sorted(recall.items(), key=lambda kv: (_float(kv[1]) if kv[1] is not None else math.inf, str(kv[0])))
    body = "".join(f"<tr><td>{esc(name)}</td><td>{_pct(value)}</td></tr>" for name, value in rows)
    bal = summary.get("best_val_balanced_acc")
    note = f'<p class="note">Balanced accuracy (their mean): {_pct(bal)}. Lowest recall first.</p>' if bal is not None else ""
    return note + f'<div class="scroll"><table class="grid"><thead><tr><th>class</th><th>recall</th></tr></thead><tbody>{body}</tbody></table></div>'


def per_label(summary: Mapping[str, Any]) -> str | None:
    """The multi-label table: each label's AP, threshold, precision, recall, F1 and support."""
    labels = summary.get("per_label")
    if not isinstance(labels, Mapping) or not labels:
        return None
    head = "".join(f"<th>{h}</th>" for h in ("label", "AP", "threshold", "precision", "recall", "F1", "positives"))
    body = []
    for name, v in labels.items():
        v = v if isinstance(v, Mapping) else {}
        cells = [_pct(v.get("ap")), _num(v.get("threshold"), "loss"), _pct(v.get("precision")), _pct(v.get("recall")),
                 _pct(v.get("f1")), _num(v.get("support"), "count")]
        body.append(f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    source = summary.get("thresholds_source") or "validation"
    kept = summary.get("thresholds_default") or []
    note = (f"Thresholds chosen per label for the best F1 on the {esc(source)} images (so F1 here is optimistic; "
            "mAP does not depend on them). A label is predicted when its probability is above its threshold.")
    if kept:
        note += f" Kept at 0.5 (no positive image to choose on): {esc(', '.join(map(str, kept)))}."
    return (f'<p class="note">{note}</p><div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


# --------------------------------------------------------------------------------------- helpers


def _table(
    rows: Sequence[Mapping[str, Any]], *, highlight: int | None = None, highlight_class: str = "best", numeric_total: Sequence[str] = ()
) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{highlight_class}"' if i == highlight else ""
        cells = "".join(f"<td{_align(r.get(c))}>{esc(_cell(c, r.get(c)))}</td>" for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    if numeric_total and rows:
        totals = {c: sum(int(f) for f in (_float(r.get(c)) for r in rows) if not math.isnan(f)) for c in numeric_total if c in columns}
        cells = "".join(
            f"<td>{esc(_cell(c, totals[c]) if c in totals else ('total' if j == 0 else ''))}</td>" for j, c in enumerate(columns)
        )
        body.append(f'<tr class="total">{cells}</tr>')
    return f'<div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _cell(column: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    name = column.lower()
    if name == "epoch":
        return f"{value:g}"  # 0.5, 1, 1.5: fractional rows on small data
    if name in _INT_COLUMNS or name.endswith("_params"):
        return f"{int(value):,}"
    if name == "lr" or name.endswith("_lr"):
        return f"{value:.2e}"
    if name.endswith("acc") or name.endswith("loss"):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _align(value: Any) -> str:
    """Words (a stage, a group's name) read left-aligned; numbers stay right-aligned."""
    return ' class="text"' if isinstance(value, str) and value else ""


def _details(title: str, body: str, *, open_: bool) -> str:
    flag = " open" if open_ else ""
    return f"<details{flag}><summary>{esc(title)}</summary>\n{body}\n</details>"


def _value(v: Any) -> str:
    if isinstance(v, Mapping):
        return key_values(v)
    if isinstance(v, list):
        text = ", ".join(_item(x) for x in v)
        return esc(text) if len(v) <= _OPEN_LIST_MAX else _details(f"{len(v)} items", esc(text), open_=False)
    return esc(v)


def _item(it: Any) -> str:
    """One entry of a load-report list: a key, a (old, new) pair, or a dict of details."""
    if isinstance(it, (list, tuple)):
        return " → ".join(_item(x) for x in it)
    if isinstance(it, Mapping):
        return ", ".join(f"{k}: {_item(v)}" for k, v in it.items())
    return str(it)


def _bar(fraction: Any) -> str:
    f = _float(fraction)
    width = 0.0 if math.isnan(f) else min(max(f, 0.0), 1.0) * 100
    return f'<span class="bar"><span style="width:{width:.1f}%"></span></span>'


def _kept_where(summary: Mapping[str, Any]) -> str:
    epoch = summary.get("best_epoch")
    if epoch is None:
        return ""
    stage = stage_name(summary.get("best_stage"))
    of = f" of {summary['epochs']}" if summary.get("epochs") is not None else ""
    return f"epoch {_float(epoch):g}{of}" + (f", {stage}" if stage else "")


def _preview(classes: Sequence[Any]) -> str:
    shown = ", ".join(str(c) for c in classes[:6])
    return shown + (f", … (+{len(classes) - 6})" if len(classes) > 6 else "")


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pct(v: Any) -> str:
    f = _float(v)
    return "—" if math.isnan(f) else f"{f * 100:.1f}%"


def _share(part: Any, total: Any) -> str:
    """A percentage that keeps small shares visible: 1,539 of 11 M is 0.014%, not 0.0%."""
    f = _float(part) / _float(total) * 100
    if math.isnan(f):
        return "—"
    return f"{f:.1f}%" if f >= 1 or f == 0 else f"{f:.2g}%"


def _num(v: Any, kind: str) -> str:
    f = _float(v)
    if math.isnan(f):
        return "—"
    return f"{f:.4f}" if kind == "loss" else f"{int(f):,}"


def _rate(v: Any) -> str:
    f = _float(v)
    return "" if math.isnan(f) else f"{f:,.1f} images/s"


def _duration(seconds: Any) -> str:
    s = _float(seconds)
    if math.isnan(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {sec:02d}s"
