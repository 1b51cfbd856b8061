"""Survey results as SVG, drawn on the server: no script, so they work in a locked-down
browser and can be tested as markup. Each chart takes one published summary from
`bot.core.surveys.report.run_results` (a hidden one never reaches here) and carries a text
alternative (`<title>` and `<desc>`); the page shows the figures in a table beside it."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from markupsafe import Markup

from bot.core.surveys.definitions import LIKERT_LABELS

WIDTH = 360  # the viewBox; the page scales it (small enough to stay legible on a phone)
# Five points from disagreement to agreement; darker ends so white text stays readable.
LIKERT_COLOURS = ("#b3261e", "#e8835a", "#9e9e9e", "#5b8fd6", "#1d4f9c")
LIKERT_TEXT = ("#ffffff", "#1b1b1b", "#1b1b1b", "#1b1b1b", "#ffffff")
DETRACTOR, PASSIVE, PROMOTER = "#b3261e", "#9e9e9e", "#1d6b3a"
BAR = "#1d4f9c"
INK = "#1b1b1b"
MUTED = "#555555"


def _svg(chart_id: str, title: str, desc: str, height: int, body: str) -> Markup:
    return Markup(  # every text below goes through escape()
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg" '
        f'preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>{body}</svg>'
    )


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "—"


def likert(chart_id: str, text: str, summary: dict[str, Any], labels: Sequence[str] = ()) -> Markup:
    """A 100% bar of the five answers, then the mean on a 1–5 scale with its 95% interval."""
    names = tuple(labels) or LIKERT_LABELS
    counts = [int(summary["distribution"].get(point, 0)) for point in range(1, 6)]
    n = sum(counts)
    body: list[str] = []
    x = 0.0
    for index, count in enumerate(counts):
        width = WIDTH * count / n if n else 0
        if width:
            body.append(
                f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="34" '
                f'fill="{LIKERT_COLOURS[index]}"><title>{escape(names[index])}: {count} '
                f"({_pct(count, n)})</title></rect>"
            )
            if width >= 28:
                body.append(
                    f'<text x="{x + width / 2:.1f}" y="21" text-anchor="middle" '
                    f'font-size="12" fill="{LIKERT_TEXT[index]}">{_pct(count, n)}</text>'
                )
        x += width
    mean, interval = summary.get("mean"), summary.get("ci95")
    scale_y = 62

    def at(value: float) -> float:
        return 10 + (WIDTH - 20) * (value - 1) / 4

    body.append(
        f'<line x1="{at(1):.1f}" y1="{scale_y}" x2="{at(5):.1f}" y2="{scale_y}" '
        f'stroke="{MUTED}" stroke-width="1"/>'
    )
    for point in range(1, 6):
        body.append(
            f'<line x1="{at(point):.1f}" y1="{scale_y - 4}" x2="{at(point):.1f}" '
            f'y2="{scale_y + 4}" stroke="{MUTED}"/>'
            f'<text x="{at(point):.1f}" y="{scale_y + 20}" text-anchor="middle" font-size="12" '
            f'fill="{MUTED}">{point}</text>'
        )
    if interval:
        low, high = interval
        body.append(
            f'<rect class="ci" x="{at(low):.1f}" y="{scale_y - 6}" '
            f'width="{max(at(high) - at(low), 1):.1f}" height="12" fill="{BAR}" '
            f'fill-opacity="0.25"/>'
        )
    if mean is not None:
        body.append(f'<circle class="mean" cx="{at(mean):.1f}" cy="{scale_y}" r="6" fill="{BAR}"/>')
    shown = f"mean {mean:.2f}" if mean is not None else "no answers"
    if interval:
        shown += f", 95% interval {interval[0]:.2f} to {interval[1]:.2f}"
    desc = (
        "; ".join(f"{names[i]}: {counts[i]} ({_pct(counts[i], n)})" for i in range(5))
        + f"; {shown}."
    )
    return _svg(chart_id, text, desc, 90, "".join(body))


def enps(chart_id: str, text: str, summary: dict[str, Any]) -> Markup:
    """Columns for the scores 0–10 (detractors, passives, promoters), then eNPS on −100…100
    with its 95% interval."""
    counts = [int(summary["distribution"].get(score, 0)) for score in range(11)]
    top = max(counts) or 1
    column = (WIDTH - 20) / 11
    body: list[str] = []
    for score, count in enumerate(counts):
        colour = DETRACTOR if score <= 6 else PASSIVE if score <= 8 else PROMOTER
        height = 76 * count / top
        x = 10 + score * column
        body.append(
            f'<rect x="{x + 2:.1f}" y="{100 - height:.1f}" width="{column - 4:.1f}" '
            f'height="{height:.1f}" fill="{colour}"><title>{score}: {count}</title></rect>'
            f'<text x="{x + column / 2:.1f}" y="118" text-anchor="middle" font-size="12" '
            f'fill="{MUTED}">{score}</text>'
        )
        if count:
            body.append(
                f'<text x="{x + column / 2:.1f}" y="{96 - height:.1f}" text-anchor="middle" '
                f'font-size="12" fill="{INK}">{count}</text>'
            )
    value, interval = summary.get("enps"), summary.get("ci95")
    line_y = 150

    def at(value: float) -> float:
        return 14 + (WIDTH - 28) * (value + 100) / 200

    body.append(
        f'<line x1="{at(-100):.1f}" y1="{line_y}" x2="{at(100):.1f}" y2="{line_y}" '
        f'stroke="{MUTED}"/>'
    )
    for mark in (-100, -50, 0, 50, 100):
        body.append(
            f'<line x1="{at(mark):.1f}" y1="{line_y - 4}" x2="{at(mark):.1f}" '
            f'y2="{line_y + 4}" stroke="{MUTED}"/>'
            f'<text x="{at(mark):.1f}" y="{line_y + 20}" text-anchor="middle" font-size="12" '
            f'fill="{MUTED}">{mark:+d}</text>'
        )
    if interval:
        body.append(
            f'<rect class="ci" x="{at(interval[0]):.1f}" y="{line_y - 6}" '
            f'width="{max(at(interval[1]) - at(interval[0]), 1):.1f}" height="12" '
            f'fill="{PROMOTER}" fill-opacity="0.25"/>'
        )
    if value is not None:
        body.append(
            f'<circle class="mean" cx="{at(value):.1f}" cy="{line_y}" r="6" fill="{PROMOTER}"/>'
        )
    shown = f"eNPS {value:+.0f}" if value is not None else "no answers"
    if interval:
        shown += f", 95% interval {interval[0]:+.0f} to {interval[1]:+.0f}"
    desc = "; ".join(f"{s}: {counts[s]}" for s in range(11)) + f"; {shown}."
    return _svg(chart_id, text, desc, 180, "".join(body))


def bars(chart_id: str, text: str, summary: dict[str, Any]) -> Markup:
    """One horizontal bar per option (choice and multiple choice), with count and share."""
    counts: dict[str, int] = {str(k): int(v) for k, v in summary.get("counts", {}).items()}
    n = int(summary.get("n", 0))
    top = max(counts.values(), default=0) or 1
    label_width, row = 120, 28
    body: list[str] = []
    for index, (option, count) in enumerate(counts.items()):
        y = index * row
        width = (WIDTH - label_width - 70) * count / top
        shown = option if len(option) <= 18 else option[:17] + "…"
        body.append(
            f'<text x="{label_width - 8}" y="{y + 19}" text-anchor="end" font-size="12" '
            f'fill="{INK}">{escape(shown)}</text>'
            f'<rect x="{label_width}" y="{y + 5}" width="{max(width, 1):.1f}" height="20" '
            f'fill="{BAR}"><title>{escape(option)}: {count}</title></rect>'
            f'<text x="{label_width + width + 6:.1f}" y="{y + 19}" font-size="12" '
            f'fill="{INK}">{count} ({_pct(count, n)})</text>'
        )
    desc = "; ".join(f"{option}: {count} ({_pct(count, n)})" for option, count in counts.items())
    return _svg(chart_id, text, desc, max(row * len(counts), row), "".join(body))
