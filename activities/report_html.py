"""The report as one self-contained HTML page, and the per-file lines as CSV.

The page is rendered from ``report.json`` alone (`contracts.report.ReportDocument`): totals, charts and capped
tables, never the per-file lines, so it is the same size for any migration. It needs no network when viewed:
charts are inline SVG drawn here, styles are inline, there is no script, and a Content-Security-Policy forbids
loading anything (links to image sets are plain navigations). Every value is escaped: UIDs, keys and reasons
come from DICOM headers, S3 listings and the service's output.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from html import escape
from urllib.parse import quote, urlsplit

from contracts.common import FileState
from contracts.records import LedgerEntry
from contracts.report import REASON_LIMIT, GroupRow, ReportDetails, ReportDocument, TimelineBucket

STATE_COLORS: dict[FileState, str] = {
    FileState.IMPORTED: "#2e7d32",
    FileState.IMPORTED_WITH_WARNINGS: "#e0a100",
    FileState.REJECTED: "#c62828",
    FileState.FAILED: "#6a1b9a",
    FileState.SKIPPED_DUPLICATE: "#607d8b",
}
ORIGIN_COLORS = {"himig": "#1565c0", "healthimaging": "#ef6c00"}
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP, _RIGHT = 760, 240, 64, 36, 12, 16
_LABEL_CHARS = 110
DASH = "\u2013"  # shown for a value that is absent

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1100px;
color:#1b1f23;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:.9em}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-left:6px solid var(--c);border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:1.6em}.card span{font-size:.85em;color:#444}
table{border-collapse:collapse;width:100%;font-size:.85em;margin:8px 0}
th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.9em;word-break:break-all}td code{font-size:.8em}td.uid{min-width:190px}td.uid code{overflow-wrap:anywhere;word-break:normal}
td.set code{white-space:nowrap;word-break:normal}.scroll{overflow-x:auto}.ok{color:#2e7d32}.bad{color:#c62828;font-weight:bold}
.none{color:#666;font-style:italic}.legend span{display:inline-block;margin-right:14px;font-size:.85em}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
svg{max-width:100%;height:auto}svg text{font-family:inherit;font-size:11px;fill:#333}
"""


def e(value: object) -> str:
    """``value`` as HTML text or attribute content (quotes escaped too)."""
    return escape(str(value), quote=True)


def _fmt_time(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else DASH


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def render_html(doc: ReportDocument) -> str:
    """The whole report page for ``doc``."""
    d = doc.details
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched when the page is viewed: no scripts, images or styles from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>himig report {e(doc.migration_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Migration report <code>{e(doc.migration_id)}</code></h1>",
        f'<p class="meta">data store <code>{e(doc.datastore_id or DASH)}</code> · started {_fmt_time(d.started_at)}'
        f" · report written {_fmt_time(d.finished_at)}" + (" · <b>cancelled</b>" if doc.cancelled else "") + "</p>",
        _totals(doc),
        _accounting(doc),
        "<h2>Files per state over time</h2>", _legend(), _cumulative_chart(d.timeline),
        "<h2>Throughput</h2>", _throughput_chart(d.timeline),
        "<h2>Reasons (rejected, failed, imported with warnings)</h2>", _reasons(doc),
        "<h2>Warnings of imported files, by origin</h2>", _warnings(d),
        "<h2>Studies</h2>", _group_table(d.studies, d.studies_total, doc, series=False),
        "<h2>Series</h2>", _group_table(d.series, d.series_total, doc, series=True),
        "<h2>Non-primary image sets and their reconciliation</h2>", _non_primary(doc),
        "<h2>Plan against actual</h2>", _plan(doc),
        "<h2>Verification</h2>", _verify(d),
    ]
    if d.section_problems:
        parts.append('<ul class="bad">' + "".join(f"<li>{e(p)}</li>" for p in d.section_problems[:10]) + "</ul>")
    if doc.fhir:
        parts += ["<h2>FHIR ImagingStudy (HealthLake)</h2>", _fhir(doc.fhir)]
    parts += [_files_note(doc), "</body></html>"]
    return "\n".join(parts) + "\n"


def _totals(doc: ReportDocument) -> str:
    cards = [f'<div class="card" style="--c:#333"><b>{doc.files_total:,}</b><span>files · '
             f"{e(_fmt_bytes(doc.bytes_total))}</span></div>"]
    for state in FileState:
        n = doc.files_by_state.get(state, 0)
        cards.append(f'<div class="card" style="--c:{STATE_COLORS[state]}"><b>{n:,}</b><span>{e(state.value)}</span></div>')
    cards.append(f'<div class="card" style="--c:#0277bd"><b>{doc.image_sets:,}</b><span>image sets '
                 f"({doc.primary_image_sets:,} primary, {len(doc.non_primary_image_sets):,} non-primary)</span></div>")
    return '<div class="cards">' + "".join(cards) + "</div>" + _share_bar(doc)


def _share_bar(doc: ReportDocument) -> str:
    """One bar split by state, so the proportions show at a glance."""
    total = sum(doc.files_by_state.values())
    if not total:
        return ""
    x, rects = 0.0, []
    for state in FileState:
        n = doc.files_by_state.get(state, 0)
        if n:
            w = _WIDTH * n / total
            rects.append(f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="18" fill="{STATE_COLORS[state]}">'
                         f"<title>{e(state.value)}: {n:,} ({100 * n / total:.1f}%)</title></rect>")
            x += w
    return (f'<svg role="img" aria-label="files by state" viewBox="0 0 {_WIDTH} 18" width="{_WIDTH}" height="18">'
            + "".join(rects) + "</svg>")


def _accounting(doc: ReportDocument) -> str:
    if doc.unaccounted or doc.accounted_twice:
        return (f'<p class="bad">Accounting problem: {doc.unaccounted:,} files unaccounted, '
                f"{doc.accounted_twice:,} accounted twice.</p>")
    return f'<p class="ok">Every one of the {doc.files_total:,} source files is accounted for exactly once.</p>'


def _legend() -> str:
    return '<p class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{e(s.value)}</span>' for s, c in STATE_COLORS.items()) + "</p>"


def _axes(y_max: float, y_label: str, start: datetime, end: datetime) -> list[str]:
    """Frame, y ticks (0, half, max) and the first and last time under the x axis."""
    x0, x1, y0, y1 = _LEFT, _WIDTH - _RIGHT, _HEIGHT - _BOTTOM, _TOP
    out = [f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#888"/>']
    for frac in (0.0, 0.5, 1.0):
        y = y0 - (y0 - y1) * frac
        value = y_max * frac
        label = f"{value:,.0f}" if y_max >= 10 else f"{value:,.2f}"
        out.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{e(label)}</text>')
    out.append(f'<text x="{x0}" y="{y0 + 16}">{e(_fmt_time(start))}</text>')
    out.append(f'<text x="{x1}" y="{y0 + 16}" text-anchor="end">{e(_fmt_time(end))}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{y0 + 30}" text-anchor="middle">{e(_duration(end - start))}'
               "</text>")
    out.append(f'<text x="12" y="{(y0 + y1) / 2:.0f}" transform="rotate(-90 12 {(y0 + y1) / 2:.0f})" '
               f'text-anchor="middle">{e(y_label)}</text>')
    return out


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"elapsed {hours}h {minutes:02d}m {secs:02d}s" if hours else f"elapsed {minutes}m {secs:02d}s"


def _svg(label: str, body: Sequence[str]) -> str:
    return (f'<svg role="img" aria-label="{e(label)}" viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" '
            f'height="{_HEIGHT}">' + "".join(body) + "</svg>")


def _cumulative_chart(timeline: list[TimelineBucket]) -> str:
    """Stacked areas: files in each terminal state so far, at the end of every time bucket."""
    if not timeline:
        return '<p class="none">No file reached a terminal state.</p>'
    running = dict.fromkeys(FileState, 0)
    stacks: list[dict[FileState, int]] = [dict(running)]
    for bucket in timeline:
        for state, n in bucket.files_by_state.items():
            running[state] += n
        stacks.append(dict(running))
    y_max = max(1, sum(stacks[-1].values()))
    start, end = timeline[0].start, timeline[-1].end
    xs = [_LEFT + (_WIDTH - _LEFT - _RIGHT) * i / len(timeline) for i in range(len(timeline) + 1)]

    def y(v: float) -> float:
        return _HEIGHT - _BOTTOM - (_HEIGHT - _BOTTOM - _TOP) * v / y_max

    body = _axes(y_max, "files", start, end)
    below = [0] * len(stacks)
    for state in FileState:
        above = [b + s[state] for b, s in zip(below, stacks, strict=True)]
        if above != below:
            points = [f"{x:.1f},{y(v):.1f}" for x, v in zip(xs, above, strict=True)]
            points += [f"{x:.1f},{y(v):.1f}" for x, v in reversed(list(zip(xs, below, strict=True)))]
            body.append(f'<polygon points="{" ".join(points)}" fill="{STATE_COLORS[state]}" fill-opacity="0.85">'
                        f"<title>{e(state.value)}: {stacks[-1][state]:,} files</title></polygon>")
        below = above
    return _svg("files per state over time", body)


def _throughput_chart(timeline: list[TimelineBucket]) -> str:
    """Files reaching a terminal state per second, per time bucket, split by state."""
    if not timeline:
        return '<p class="none">No file reached a terminal state.</p>'
    seconds = max((timeline[0].end - timeline[0].start).total_seconds(), 1e-3)
    rates = [sum(b.files_by_state.values()) / seconds for b in timeline]
    y_max = max(max(rates), 1e-9)
    total_files = sum(sum(b.files_by_state.values()) for b in timeline)
    span = max((timeline[-1].end - timeline[0].start).total_seconds(), 1e-3)
    body = _axes(y_max, "files / second", timeline[0].start, timeline[-1].end)
    width = (_WIDTH - _LEFT - _RIGHT) / len(timeline)
    for i, bucket in enumerate(timeline):
        x = _LEFT + width * i
        base = float(_HEIGHT - _BOTTOM)
        for state in FileState:
            n = bucket.files_by_state.get(state, 0)
            if not n:
                continue
            h = (_HEIGHT - _BOTTOM - _TOP) * (n / seconds) / y_max
            base -= h
            body.append(f'<rect x="{x + 0.5:.1f}" y="{base:.1f}" width="{max(width - 1, 0.5):.1f}" height="{h:.1f}" '
                        f'fill="{STATE_COLORS[state]}"><title>{e(_fmt_time(bucket.start))}: {n:,} '
                        f"{e(state.value)}</title></rect>")
    return (_svg("throughput", body)
            + f'<p class="meta">{total_files:,} files in {e(_duration_short(span))}: {total_files / span:,.2f} files/s '
              f"on average, {max(rates):,.2f} files/s in the busiest {e(_duration_short(seconds))}. A file counts when "
              "the verdicts of its inventory page (rejections) or import batch were written, so files arrive in "
              "steps.</p>")


def _duration_short(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds >= 10 else f"{seconds:,.1f} s"


def _hbars(rows: list[tuple[str, int, str]], unit: str) -> str:
    """Horizontal bars: (label, count, colour) each, longest first as given."""
    if not rows:
        return ""
    top = max(n for _, n, _ in rows) or 1
    line, label_w = 20, 430
    bar_w = _WIDTH - label_w - 70
    body = []
    for i, (label, n, colour) in enumerate(rows):
        y = i * line
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end"><title>{e(label)}</title>'
                    f"{e(_short(label, 70))}</text>")
        body.append(f'<rect x="{label_w}" y="{y + 3}" width="{max(bar_w * n / top, 1):.1f}" height="{line - 6}" '
                    f'fill="{colour}"><title>{n:,} {e(unit)}</title></rect>')
        body.append(f'<text x="{label_w + bar_w * n / top + 6:.1f}" y="{y + 14}">{n:,}</text>')
    height = line * len(rows) + 4
    return (f'<svg role="img" aria-label="{e(unit)} by reason" viewBox="0 0 {_WIDTH} {height}" width="{_WIDTH}" '
            f'height="{height}">' + "".join(body) + "</svg>")


def _reasons(doc: ReportDocument) -> str:
    if not doc.reasons:
        return '<p class="none">No file was rejected, failed or imported with warnings.</p>'
    items = sorted(doc.reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = []
    for text, n in items[:REASON_LIMIT]:
        state = next((s for s in FileState if text.startswith(f"{s.value}: ")), None)
        rows.append((text, n, STATE_COLORS[state] if state else "#888"))
    more = len(items) - REASON_LIMIT
    table = "<table><tr><th>files</th><th>reason</th></tr>" + "".join(
        f'<tr><td class="n">{n:,}</td><td>{e(_short(text, 400))}</td></tr>' for text, n, _ in rows) + "</table>"
    return (_hbars(rows, "files") + table
            + (f'<p class="meta">and {more:,} less frequent reasons (report.json lists them all).</p>' if more > 0 else ""))


def _warnings(d: ReportDetails) -> str:
    if not d.warnings:
        return '<p class="none">No imported file carries a warning.</p>'
    rows = [(f"{w.origin.value}: {w.code}", w.files, ORIGIN_COLORS.get(w.origin.value, "#888"))
            for w in d.warnings[:REASON_LIMIT]]
    return ('<p class="meta"><b>himig</b>: found by our parse and validation (and let through at this validation level); '
            "<b>healthimaging</b>: the import job's own WARNING output.</p>" + _hbars(rows, "files"))


def image_set_link(doc: ReportDocument, image_set_id: str, study: str | None, series: str | None) -> str:
    """The image set id, linked to its instances through DICOMweb (QIDO-RS with ``imageSetId``) when the
    study and series are known and the base is an http(s) URL; the id alone otherwise."""
    base = doc.details.dicomweb_url or ""
    text = f"<code>{e(image_set_id)}</code>"
    if not (study and series and doc.datastore_id and urlsplit(base).scheme in ("http", "https")):
        return text
    url = (f"{base.rstrip('/')}/datastore/{quote(doc.datastore_id, safe='')}/studies/{quote(study, safe='')}"
           f"/series/{quote(series, safe='')}/instances?imageSetId={quote(image_set_id, safe='')}")
    return f'<a href="{e(url)}" rel="noreferrer">{text}</a>'


def _states_cells(row: GroupRow) -> str:
    return "".join(f'<td class="n">{row.files_by_state.get(s, 0):,}</td>' for s in FileState)


def _uid(value: str | None) -> str:
    """A UID cell: a hostile file's "UID" can be any length, so it is cut (valid UIDs have at most 64)."""
    return f"<code>{e(_short(value, 100)) if value else DASH}</code>"


def _group_table(rows: list[GroupRow], total: int, doc: ReportDocument, series: bool) -> str:
    unplaced = doc.details.unplaced_files
    outside = (f'<p class="meta">{_files(unplaced)} in no study: no Study Instance UID was read (not DICOM, '
               "unreadable, or never received).</p>") if unplaced and not series else ""
    if not rows:
        return outside + '<p class="none">No file could be placed in a study.</p>'
    head = "<tr><th>study</th>" + ("<th>series</th>" if series else "") + "<th>files</th>" + "".join(
        f"<th>{e(s.value.replace('_', ' '))}</th>" for s in FileState) + "<th>size</th><th>image sets</th></tr>"
    body = []
    for r in rows:
        links = "<br>".join(image_set_link(doc, i, r.study_instance_uid, r.series_instance_uid if series else None)
                          + (" (non-primary)" if i in r.non_primary_image_sets else "") for i in r.image_sets)
        body.append(f'<tr><td class="uid">{_uid(r.study_instance_uid)}</td>'
                    + (f'<td class="uid">{_uid(r.series_instance_uid)}</td>' if series else "")
                    + f'<td class="n">{r.files:,}</td>{_states_cells(r)}<td class="n">{e(_fmt_bytes(r.bytes))}</td>'
                    f'<td class="set">{links or DASH}</td></tr>')
    note = ('<p class="meta">Those with files not imported first, then the largest'
            + (f"; and {total - len(rows):,} more {'series' if series else 'studies'} (the CSV lists every file)"
               if total > len(rows) else "") + ".</p>")
    return outside + '<div class="scroll"><table>' + head + "".join(body) + "</table></div>" + note


def _non_primary(doc: ReportDocument) -> str:
    d = doc.details
    out = []
    if doc.predicted_non_primary or doc.non_primary_not_predicted:
        out.append(f'<p class="meta">Planning predicted that {_files(doc.predicted_non_primary)} would land in '
                   f"non-primary image sets: {doc.predicted_non_primary_confirmed:,} did, "
                   f"{doc.predicted_non_primary_not_confirmed:,} landed primary; "
                   f"{_files(doc.non_primary_not_predicted)} landed non-primary without being predicted.</p>")
    if not d.non_primary:
        return "".join(out) + '<p class="none">The migration produced no non-primary image set.</p>'
    rows = []
    for s in d.non_primary:
        state = s.reconciliation_state or "not asked (run himig report with access to Temporal)"
        rows.append(f'<tr><td class="set">{image_set_link(doc, s.image_set_id, s.study_instance_uid, s.series_instance_uid)}'
                    f'</td><td class="uid">{_uid(s.study_instance_uid)}</td>'
                    f'<td class="uid">{_uid(s.series_instance_uid)}</td><td class="n">{s.files:,}</td>'
                    f'<td class="uid"><code>{e(s.reconciliation_id)}</code></td><td>{e(state)}</td></tr>')
    more = d.non_primary_total - len(d.non_primary)
    return ("".join(out) + '<div class="scroll"><table><tr><th>image set</th><th>study</th><th>series</th>'
            "<th>files</th><th>reconciliation workflow</th><th>state</th></tr>" + "".join(rows) + "</table></div>"
            + (f'<p class="meta">and {more:,} more non-primary image sets (report.json lists their ids).</p>'
               if more > 0 else ""))


def _files(n: int) -> str:
    return f"{n:,} file" if n == 1 else f"{n:,} files"


def _plan(doc: ReportDocument) -> str:
    plan = doc.details.plan
    if plan is None:
        return '<p class="none">No dry run (himig plan) was recorded for this migration.</p>'
    rows = "".join(f"<tr><td>{e(r.label)}</td><td class=\"n\">{DASH if r.planned is None else f'{r.planned:,.6g}'}</td>"
                   f"<td class=\"n\">{DASH if r.actual is None else f'{r.actual:,.6g}'}</td></tr>" for r in plan.rows)
    return (f'<p class="meta">planned {_fmt_time(plan.planned_at)}</p>'
            "<table><tr><th></th><th>planned</th><th>actual</th></tr>" + rows + "</table>")


def _verify(d: ReportDetails) -> str:
    v = d.verify
    if v is None:
        return '<p class="none">No verification (himig verify) ran for this migration.</p>'
    verdict = '<b class="ok">passed</b>' if v.passed else '<b class="bad">failed</b>'
    counts = "".join(f'<tr><td>{e(k)}</td><td class="n">{n:,}</td></tr>' for k, n in v.counts.items())
    problems = "".join(f"<li>{e(p)}</li>" for p in v.problems[:100])
    return (f"<p>Verification {verdict} ({_fmt_time(v.verified_at)}).</p>"
            + (f"<table>{counts}</table>" if counts else "") + (f"<ul>{problems}</ul>" if problems else ""))


def _fhir(fhir: dict[str, object]) -> str:
    labels = {"imaging_studies_imported": "ImagingStudy resources imported",
              "imaging_studies_failed": "refused by the import", "rejected_by_validate": "refused by $validate",
              "batches_with_problems": "batches with problems"}
    rows = "".join(f'<tr><td>{e(label)}</td><td class="n">{e(fhir.get(key, DASH))}</td></tr>'
                   for key, label in labels.items())
    return f"<table>{rows}</table>"


def _files_note(doc: ReportDocument) -> str:
    where = f" (<code>{e(doc.files_uri)}</code>)" if doc.files_uri else ""
    return (f'<p class="meta">Every file with its state and reason: the per-file report{where}, and files.csv next to '
            "it for spreadsheets (<code>himig report ID --csv FILE</code>).</p>")


# Per-file CSV ---------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("key", "state", "code", "reason", "warnings", "size", "batch", "job_id", "image_set_id", "is_primary",
               "study_instance_uid", "series_instance_uid", "duplicate_of", "predicted_non_primary")
# A cell starting with one of these is a formula to a spreadsheet: such cells get a leading apostrophe
# (OWASP's advice for CSV injection); keys and reasons are not ours to trust.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) and not isinstance(value, int) else text


def csv_lines(rows: Iterable[LedgerEntry]) -> Iterator[str]:
    """The header, then one CSV line per report line (RFC 4180 quoting, CRLF), one at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def take() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield take()
    for r in rows:
        warnings = "; ".join(f"{f.origin.value}:{f.code}" for f in r.findings or []
                             if r.state is not FileState.REJECTED)
        writer.writerow([_cell(v) for v in (r.key, r.state.value, r.code, r.reason, warnings, r.size, r.batch,
                                             r.job_id, r.image_set_id, r.is_primary, r.study_instance_uid,
                                             r.series_instance_uid, r.duplicate_of, r.predicted_non_primary)])
        yield take()
