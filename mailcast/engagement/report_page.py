"""A run's engagement report: the figures (from the ``campaign_summary`` and ``link_clicks``
views) and a standalone HTML page with inline SVG charts (no script, no external resource):
opens and clicks over time since the send, and the funnel sent → delivered → opened → clicked.
``mailcast report RUN_ID --html OUT.html`` writes it; the flows publish the same figures as a
Prefect table artifact (:func:`figure_rows`)."""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from mailcast.ledger import reports
from mailcast.ledger.models import CLICK, OPEN
from mailcast.transport.factory import channel_of

OPEN_COLOR, CLICK_COLOR = "#2563eb", "#ea580c"
_BUCKETS = (
    (timedelta(minutes=1), "min"), (timedelta(minutes=5), "min"), (timedelta(minutes=15), "min"),
    (timedelta(hours=1), "h"), (timedelta(hours=3), "h"), (timedelta(hours=6), "h"),
    (timedelta(hours=12), "h"), (timedelta(days=1), "d"), (timedelta(days=7), "d"),
)  # fmt: skip
MAX_BUCKETS = 48

# (label, count column, rate column or None, what the rate is of)
FIGURES = (
    ("Recipients", "recipients", None, ""),
    ("Sent", "sent", "delivery_rate", "of sent + failed"),
    ("Failed", "failed", None, ""),
    ("Skipped", "skipped", None, ""),
    ("Delivered", "delivered", "delivered_rate", "of sent + failed"),
    ("Hard bounces", "hard_bounces", "hard_bounce_rate", "of sent + failed"),
    ("Soft bounces", "soft_bounces", "soft_bounce_rate", "of sent + failed"),
    ("Opens", "opens", None, ""),
    ("Unique opens", "unique_opens", "open_rate", "of sent"),
    ("Clicks", "clicks", None, ""),
    ("Unique clicks", "unique_clicks", "click_rate", "of sent"),
    ("Click-to-open", "unique_clicks", "click_to_open_rate", "of unique opens"),
    ("Unsubscribes", "unsubscribes", "unsubscribe_rate", "of sent"),
    ("Complaints", "complaints", "complaint_rate", "of delivered"),
)


@dataclass
class RunReport:
    run_id: str
    campaign: str
    dry_run: bool
    status: str
    summary: dict[str, Any]
    started: datetime | None
    links: list[dict[str, Any]] = field(default_factory=list)
    opens: list[datetime] = field(default_factory=list)
    clicks: list[datetime] = field(default_factory=list)
    generated: datetime = field(default_factory=lambda: datetime.now(UTC))
    channel: str = "SMTP"  # how the messages left: SMTP, Amazon SES …


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def load_report(engine: Engine, run_id: str) -> RunReport:
    """Everything the page shows, for run ``run_id`` (the full id)."""
    with engine.connect() as conn:
        summary = reports.summary_row(conn, run_id)
        assert summary is not None, run_id
        started = reports.first_sent(conn, run_id)
        transport = reports.run_transport(conn, run_id)
        links = reports.link_clicks(conn, run_id)
        times: dict[str, list[datetime]] = {OPEN: [], CLICK: []}
        for kind, at in reports.event_times(conn, run_id, (OPEN, CLICK)):
            t = _utc(at)
            if t is not None:
                times[kind].append(t)
    return RunReport(
        run_id=run_id,
        campaign=summary["campaign"],
        dry_run=bool(summary["dry_run"]),
        status=summary["run_status"],
        summary=summary,
        started=_utc(started),
        links=links,
        opens=times[OPEN],
        clicks=times[CLICK],
        channel=channel_of(transport),
    )


def figure_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures as table rows: metric, count, rate (a percentage, or None)."""
    rows = []
    for label, count, rate, of in FIGURES:
        value = summary.get(rate) if rate else None
        rows.append(
            {
                "metric": label,
                "count": int(summary.get(count) or 0),
                "rate": None if value is None else round(float(value) * 100, 2),
                "rate_of": of,
            }
        )
    return rows


# -- charts -----------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    """A round top for the y axis whose quarters are round too (whole counts when small)."""
    if value <= 0:
        return 4
    if value <= 40:
        return 4 * math.ceil(value / 4)
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * exp >= value:
            return step * exp
    return 10 * exp  # pragma: no cover


def _bucket(span: timedelta) -> tuple[timedelta, str]:
    for size, unit in _BUCKETS:
        if span / size <= MAX_BUCKETS:
            return size, unit
    days = math.ceil(span / timedelta(days=1) / MAX_BUCKETS)
    return timedelta(days=days), "d"


def _offset_label(offset: timedelta, unit: str) -> str:
    minutes = offset.total_seconds() / 60
    if unit == "min":
        return f"+{minutes:g}m"
    if unit == "h":
        return f"+{minutes / 60:g}h"
    return f"+{minutes / 1440:g}d"


def timeline_svg(start: datetime | None, opens: list[datetime], clicks: list[datetime]) -> str:
    """A line chart: opens and clicks per time bucket since ``start`` (the first send)."""
    width, height = 760, 300
    left, right, top, bottom = 56, 16, 20, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    everything = opens + clicks
    if start is None:
        start = min(everything) if everything else datetime.now(UTC)
    end = max(everything) if everything else start + timedelta(hours=1)
    span = max(end - start, timedelta(minutes=10))
    size, unit = _bucket(span)
    n = max(1, math.ceil(span / size) + (1 if (span % size) == timedelta(0) else 0))

    def counts(times: list[datetime]) -> list[int]:
        c: Counter[int] = Counter()
        for t in times:
            c[min(n - 1, max(0, int((t - start) / size)))] += 1
        return [c[i] for i in range(n)]

    series = [("Opens", OPEN_COLOR, counts(opens)), ("Clicks", CLICK_COLOR, counts(clicks))]
    ymax = _nice_max(max([1, *(max(s[2]) for s in series)]))

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / ymax

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}"'
        f' height="{height}" role="img" aria-labelledby="tl-title" class="chart" id="timeline">',
        '<title id="tl-title">Opens and clicks over time since the send</title>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa"'
        ' stroke="#ddd"/>',
    ]
    for k in range(5):
        v = ymax * k / 4
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}"'
            ' stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>'
        )
    step = max(1, math.ceil(n / 8))
    for i in range(0, n, step):
        out.append(
            f'<text x="{x(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="tick">'
            f"{html.escape(_offset_label(size * i, unit))}</text>"
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"time since the first message was sent (per {html.escape(_offset_label(size, unit)[1:])})"
        "</text>"
    )
    for name, color, values in series:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2.5" points="{points}"'
            f' class="series" data-series="{name.lower()}"/>'
        )
        for i, v in enumerate(values):
            if v:
                out.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}">'
                    f"<title>{name}: {v} at {html.escape(_offset_label(size * i, unit))}</title>"
                    "</circle>"
                )
    for k, (name, color, values) in enumerate(series):
        lx = left + 12 + k * 120
        out.append(
            f'<rect x="{lx}" y="{top + 8}" width="12" height="12" fill="{color}"/>'
            f'<text x="{lx + 18}" y="{top + 18}" class="legend">{name} ({sum(values)})</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def funnel_svg(summary: dict[str, Any]) -> str:
    """Horizontal bars: sent → delivered → opened → clicked, each with its share of sent."""
    stages = [
        ("Sent", int(summary.get("sent") or 0), "#334155"),
        ("Delivered", int(summary.get("delivered") or 0), "#0f766e"),
        ("Opened", int(summary.get("unique_opens") or 0), OPEN_COLOR),
        ("Clicked", int(summary.get("unique_clicks") or 0), CLICK_COLOR),
    ]
    width, bar_h, gap, label_w, top = 760, 40, 14, 110, 10
    plot_w = width - label_w - 150
    height = top * 2 + len(stages) * (bar_h + gap)
    base = stages[0][1] or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}"'
        f' height="{height}" role="img" aria-labelledby="fn-title" class="chart" id="funnel">',
        '<title id="fn-title">Funnel: sent, delivered, opened, clicked</title>',
    ]
    for i, (name, value, color) in enumerate(stages):
        y = top + i * (bar_h + gap)
        w = max(2.0, plot_w * value / base) if value else 0
        share = f"{100 * value / base:.1f}%" if stages[0][1] else "–"
        out.append(
            f'<text x="{label_w - 10}" y="{y + bar_h / 2 + 5}" text-anchor="end" class="stage">'
            f"{name}</text>"
            f'<rect x="{label_w}" y="{y}" width="{plot_w}" height="{bar_h}" fill="#f1f5f9"/>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"'
            f' class="bar" data-stage="{name.lower()}"><title>{name}: {value}</title></rect>'
            f'<text x="{label_w + plot_w + 10}" y="{y + bar_h / 2 + 5}" class="value">'
            f"{value} · {share}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


# -- the page ---------------------------------------------------------------------------------

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1e293b;
  margin: 0; background: #fff; }
main { max-width: 820px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px; }
.meta { color: #64748b; margin: 0 0 20px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }
.card { border: 1px solid #e2e8f0; border-radius: 8px; padding: 10px 12px; }
.card .n { font-size: 22px; font-weight: 600; } .card .l { color: #64748b; font-size: 13px; }
.card .r { color: #0f766e; font-size: 13px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e2e8f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.url { word-break: break-all; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg .tick { font-size: 11px; fill: #64748b; } svg .axis { font-size: 12px; fill: #475569; }
svg .legend, svg .value { font-size: 13px; fill: #1e293b; }
svg .stage { font-size: 14px; font-weight: 600; fill: #1e293b; }
.note { color: #64748b; font-size: 13px; }
"""


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}%"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def render_html(report: RunReport) -> str:
    s = report.summary
    esc = html.escape
    cards = []
    for label, count, rate, of in FIGURES:
        if label in ("Recipients", "Failed", "Skipped", "Opens", "Clicks"):
            continue
        ratio = s.get(rate) if rate else None
        value = "" if rate is None else f'<div class="r">{_pct(ratio)} {esc(of)}</div>'
        shown = str(int(s.get(count) or 0))
        if label == "Click-to-open":
            shown, value = _pct(ratio), f'<div class="r">{esc(of)}</div>'
        cards.append(
            f'<div class="card"><div class="n">{shown}</div><div class="l">{esc(label)}</div>'
            f"{value}</div>"
        )
    rows = "\n".join(
        f"<tr><td>{esc(r['metric'])}</td><td class=num>{r['count']}</td>"
        f"<td class=num>{_rate(r['rate'])}</td><td>{esc(r['rate_of'])}</td></tr>"
        for r in figure_rows(s)
    )
    if report.links:
        link_rows = "\n".join(
            f"<tr><td class=num>{link['position']}</td><td class=url>{esc(str(link['url']))}</td>"
            f"<td class=num>{link['clicks']}</td><td class=num>{link['unique_clicks']}</td></tr>"
            for link in report.links
        )
        links = (
            "<table><thead><tr><th class=num>#</th><th>link</th><th class=num>clicks</th>"
            f"<th class=num>unique</th></tr></thead><tbody>{link_rows}</tbody></table>"
        )
    else:
        links = '<p class="note">No tracked links in this run.</p>'
    started = report.started.strftime("%Y-%m-%d %H:%M UTC") if report.started else "not sent yet"
    mode = "dry run (outbox)" if report.dry_run else f"sent over {esc(report.channel)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(report.campaign)} — run {esc(report.run_id)}</title>
<style>{_STYLE}</style></head>
<body><main>
<h1>{esc(report.campaign)}</h1>
<p class="meta">run <code>{esc(report.run_id)}</code> · {esc(report.status)} · {mode} ·
first message {esc(started)} · report of {report.generated.strftime("%Y-%m-%d %H:%M UTC")}</p>
<div class="cards">
{"".join(cards)}
</div>
<h2>Opens and clicks over time</h2>
{timeline_svg(report.started, report.opens, report.clicks)}
<h2>Funnel</h2>
{funnel_svg(s)}
<h2>Figures</h2>
<table><thead><tr><th>metric</th><th class=num>count</th><th class=num>rate</th><th>rate of</th>
</tr></thead><tbody>
{rows}
</tbody></table>
<h2>Links</h2>
{links}
<p class="note">Opens are counted from the tracking pixel (mail clients that block images are
not counted; some privacy features open every message). Unique figures count recipients.</p>
</main></body></html>
"""


def write_html_report(database_url: str, run_id: str, out: Path) -> Path:
    """Write run ``run_id``'s report page to ``out``; returns the path."""
    from mailcast.ledger.store import Ledger

    ledger = Ledger(database_url)
    run = ledger.run(run_id)
    page = render_html(load_report(ledger.engine, run.id))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def run_figures(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's counts and rates (``campaign_summary``) as table rows."""
    from mailcast.ledger.store import Ledger

    row = Ledger(database_url).campaign_summary(run_id)
    return figure_rows(row) if row is not None else []
