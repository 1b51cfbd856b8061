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


# --- trends across runs and the ADKAR heat map -------------------------------------------------

HIDDEN = "#e6e6e6"
TREND_LINE = "#1d4f9c"


def _svg_named(kind: str, chart_id: str, title: str, desc: str, height: int, body: str) -> Markup:
    """Like `_svg`, classed `survey-chart trend` or `survey-chart heatmap`: the results page's
    `svg.chart` are its per-question charts only."""
    return Markup(  # every text below goes through escape()
        f'<svg class="survey-chart {kind}" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg" '
        f'preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(desc)}</desc>{body}</svg>'
    )


def trend(
    chart_id: str,
    text: str,
    points: Sequence[dict[str, Any]],
    *,
    kind: str,
    min_group: int,
) -> Markup:
    """One question across runs: the mean (Likert, 1–5) or eNPS (−100…100) of each run as a
    line, with its 95% interval as a shaded band. `points` are in run order, each with
    `number` (the run), `value` and `ci95` from the published summary, or `hidden` (the
    suppression layer held it back) or neither (nobody answered): those are gaps in the line,
    labelled, never values."""
    low, high = (1.0, 5.0) if kind == "likert" else (-100.0, 100.0)
    ticks = (1, 2, 3, 4, 5) if kind == "likert" else (-100, -50, 0, 50, 100)
    left, right, top, bottom = 40, 24, 12, 150
    height = 190
    count = max(len(points), 1)
    step = (WIDTH - left - right) / max(count - 1, 1)

    def x_of(index: int) -> float:
        return left + (step * index if count > 1 else (WIDTH - left - right) / 2)

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * (value - low) / (high - low)

    def shown(value: float) -> str:
        return f"{value:.2f}" if kind == "likert" else f"{value:+.0f}"

    body: list[str] = []
    for tick in ticks:
        body.append(
            f'<line x1="{left}" y1="{y_of(tick):.1f}" x2="{WIDTH - right}" y2="{y_of(tick):.1f}" '
            f'stroke="{HIDDEN}"/>'
            f'<text x="{left - 6}" y="{y_of(tick) + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{MUTED}">{tick if kind == "likert" else f"{tick:+d}"}</text>'
        )
    # Runs of consecutive values: each is one line and one band; a gap ends them.
    stretches: list[list[int]] = [[]]
    for index, point in enumerate(points):
        if point.get("value") is None:
            stretches.append([])
        else:
            stretches[-1].append(index)
    for stretch in stretches:
        banded = [i for i in stretch if points[i].get("ci95")]
        if len(banded) >= 2 and len(banded) == len(stretch):
            upper = " ".join(f"{x_of(i):.1f},{y_of(points[i]['ci95'][1]):.1f}" for i in stretch)
            lower = " ".join(
                f"{x_of(i):.1f},{y_of(points[i]['ci95'][0]):.1f}" for i in reversed(stretch)
            )
            body.append(
                f'<polygon class="band" points="{upper} {lower}" fill="{TREND_LINE}" '
                f'fill-opacity="0.18"/>'
            )
        else:  # a lone point, or an interval missing somewhere: one bar per interval
            for i in banded:
                lo, hi = points[i]["ci95"]
                body.append(
                    f'<rect class="band" x="{x_of(i) - 5:.1f}" y="{y_of(hi):.1f}" width="10" '
                    f'height="{max(y_of(lo) - y_of(hi), 1):.1f}" fill="{TREND_LINE}" '
                    f'fill-opacity="0.18"/>'
                )
        if len(stretch) >= 2:
            line = " ".join(f"{x_of(i):.1f},{y_of(points[i]['value']):.1f}" for i in stretch)
            body.append(
                f'<polyline class="line" points="{line}" fill="none" stroke="{TREND_LINE}" '
                f'stroke-width="2"/>'
            )
    described: list[str] = []
    for index, point in enumerate(points):
        x = x_of(index)
        label = f"run {point['number']}"
        body.append(
            f'<text x="{x:.1f}" y="{bottom + 18}" text-anchor="middle" font-size="11" '
            f'fill="{MUTED}">{escape(label)}</text>'
        )
        value = point.get("value")
        if value is not None:
            interval = point.get("ci95")
            said = f"{label}: {shown(value)}"
            if interval:
                said += f" (95% interval {shown(interval[0])} to {shown(interval[1])})"
            if point.get("significant"):
                said += ", a significant change from the run before"
            body.append(
                f'<circle class="point{" significant" if point.get("significant") else ""}" '
                f'cx="{x:.1f}" cy="{y_of(value):.1f}" r="{6 if point.get("significant") else 4}" '
                f'fill="{TREND_LINE}"><title>{escape(said)}</title></circle>'
            )
        else:
            said = (
                f"{label}: hidden: fewer than {min_group} answers"
                if point.get("hidden")
                else f"{label}: no answers"
            )
            body.append(
                f'<g class="gap"><line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" '
                f'stroke="{MUTED}" stroke-dasharray="3 3"/>'
                f'<text x="{x:.1f}" y="{bottom + 32}" text-anchor="middle" font-size="10" '
                f'fill="{MUTED}">{"hidden" if point.get("hidden") else "no answers"}</text>'
                f"<title>{escape(said)}</title></g>"
            )
        described.append(said)
    what = "mean on a 1 to 5 scale" if kind == "likert" else "eNPS from −100 to +100"
    desc = f"{what} per run, with its 95% interval as a band. " + "; ".join(described) + "."
    return _svg_named("trend", chart_id, text, desc, height, "".join(body))


def _heat_colour(value: float) -> tuple[str, str]:
    """Fill and text colour of a 1–5 mean: red at 1, pale at 3, blue at 5."""
    cold, mid, warm = (0xB3, 0x26, 0x1E), (0xF4, 0xEF, 0xE6), (0x1D, 0x4F, 0x9C)
    share = min(max((value - 1) / 4, 0.0), 1.0)
    start, end, t = (cold, mid, share * 2) if share <= 0.5 else (mid, warm, share * 2 - 1)
    rgb = tuple(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
    text = "#ffffff" if abs(share - 0.5) > 0.3 else INK
    return "#{:02x}{:02x}{:02x}".format(*rgb), text


def adkar_heatmap(
    chart_id: str,
    text: str,
    stages: Sequence[str],
    rows: Sequence[dict[str, Any]],
) -> Markup:
    """ADKAR scores per group: one row per group (`label`), one column per stage; a cell is
    the published mean (1–5) coloured from red to blue, or hidden. A row has `cells`
    {stage: mean or None}, `hidden` {stages held back} and `barrier` (a stage, "unknown" or
    None), marked with a thick outline. A row whose group is hidden has `suppressed`: it
    carries its label and the word "hidden", nothing else (no figure reaches this function
    for it)."""
    label_width, cell, row_height, head = 110, (WIDTH - 110) / max(len(stages), 1), 30, 22
    height = head + row_height * max(len(rows), 1) + 4
    body: list[str] = []
    for column, stage in enumerate(stages):
        body.append(
            f'<text x="{label_width + cell * column + cell / 2:.1f}" y="15" '
            f'text-anchor="middle" font-size="10" fill="{INK}"'
            + (
                f' textLength="{cell - 4:.1f}" lengthAdjust="spacingAndGlyphs"'
                if len(stage) > 9
                else ""
            )
            + f">{escape(stage.title())}</text>"
        )
    described: list[str] = []
    for index, row in enumerate(rows):
        y = head + index * row_height
        name = str(row["label"])
        short = name if len(name) <= 19 else name[:18] + "…"
        body.append(
            f'<text x="{label_width - 6}" y="{y + 19}" text-anchor="end" font-size="10" '
            f'fill="{INK}">{escape(short)}</text>'
        )
        if row.get("suppressed"):
            body.append(
                f'<rect class="hidden" x="{label_width}" y="{y + 2}" '
                f'width="{cell * len(stages):.1f}" height="{row_height - 4}" fill="{HIDDEN}">'
                f"<title>{escape(name)}: hidden (too few answers)</title></rect>"
                f'<text x="{label_width + cell * len(stages) / 2:.1f}" y="{y + 19}" '
                f'text-anchor="middle" font-size="11" fill="{MUTED}">hidden</text>'
            )
            described.append(f"{name}: hidden (too few answers)")
            continue
        said: list[str] = []
        for column, stage in enumerate(stages):
            x = label_width + cell * column
            value = row["cells"].get(stage)
            barrier = row.get("barrier") == stage
            if value is None:
                word = "hidden" if stage in row.get("hidden", ()) else "none"
                body.append(
                    f'<rect class="hidden" x="{x + 1:.1f}" y="{y + 2}" width="{cell - 2:.1f}" '
                    f'height="{row_height - 4}" fill="{HIDDEN}"><title>{escape(name)}, {stage}: '
                    f"{word}</title></rect>"
                    f'<text x="{x + cell / 2:.1f}" y="{y + 19}" text-anchor="middle" '
                    f'font-size="10" fill="{MUTED}">{word}</text>'
                )
                said.append(f"{stage} {word}")
                continue
            fill, ink = _heat_colour(float(value))
            outline = f' stroke="{INK}" stroke-width="3"' if barrier else ""
            note = ", the barrier point" if barrier else ""
            body.append(
                f'<rect class="cell{" barrier" if barrier else ""}" x="{x + 1:.1f}" '
                f'y="{y + 2}" width="{cell - 2:.1f}" height="{row_height - 4}" fill="{fill}"'
                f"{outline}><title>{escape(name)}, {stage}: {value:.2f}{note}</title></rect>"
                f'<text x="{x + cell / 2:.1f}" y="{y + 19}" text-anchor="middle" '
                f'font-size="11" fill="{ink}">{value:.1f}{" ▲" if barrier else ""}</text>'
            )
            said.append(f"{stage} {value:.2f}{note}")
        barrier = row.get("barrier")
        tail = (
            f"; barrier {barrier}"
            if barrier and barrier != "unknown"
            else "; barrier unknown (an earlier stage is hidden)"
            if barrier == "unknown"
            else "; no barrier"
        )
        described.append(f"{name}: " + ", ".join(said) + tail)
    desc = (
        "ADKAR stage means (1 to 5) per group; the barrier point is the first stage at 3 or "
        "below. " + "; ".join(described) + "."
    )
    return _svg_named("heatmap", chart_id, text, desc, height, "".join(body))
