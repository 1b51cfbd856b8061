"""The results chart as a PNG, for the owner's results DM (chat apps show images, not SVG).

Drawn only from what `run_results` published: a question the suppression layer hid is left
out, and nothing is drawn when the whole run is hidden. Pillow is imported when a chart is
drawn, so serving pays for it only when a run closes."""

from __future__ import annotations

import io
import logging
from typing import Any

from bot.core.surveys.definitions import Survey
from bot.core.surveys.report import SUPPRESSED
from bot.core.surveys.results import BARRIER

log = logging.getLogger(__name__)
WIDTH = 900
ROW = 46
TOP = 64
LABEL_WIDTH = 380
BAR_LEFT = LABEL_WIDTH + 20
BAR_RIGHT = WIDTH - 70
INK, SUBTLE, GRID = (33, 37, 41), (108, 117, 125), (222, 226, 230)
GOOD, LOW, WHISKER = (46, 125, 50), (198, 40, 40), (33, 37, 41)


def results_png(survey: Survey, report: dict[str, Any]) -> bytes | None:
    """A bar chart of the run's published means (Likert, 1–5) and eNPS (−100…+100), each with
    its 95% interval; None when nothing may be shown or Pillow is not installed."""
    overall = report["overall"]
    if overall.get(SUPPRESSED):
        return None
    rows: list[tuple[str, float, tuple[float, float] | None, float, float, bool]] = []
    for question in survey.questions:
        summary = overall["questions"].get(question.id) or {}
        if summary.get(SUPPRESSED):
            continue
        if question.kind == "likert" and summary.get("mean") is not None:
            mean = float(summary["mean"])
            rows.append((question.text, mean, summary.get("ci95"), 1, 5, round(mean, 2) <= BARRIER))
        elif question.kind == "enps" and summary.get("enps") is not None:
            score = float(summary["enps"])
            rows.append(
                (f"eNPS: {question.text}", score, summary.get("ci95"), -100, 100, score < 0)
            )
    if not rows:
        return None
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # pragma: no cover - Pillow is a dependency; stay useful without it
        log.warning("Pillow is not installed: the results DM goes without its chart")
        return None
    height = TOP + ROW * len(rows) + 40
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    title_font = ImageFont.load_default(size=22)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    draw.text((20, 16), f"{survey.title} (run {report['number']})", fill=INK, font=title_font)
    responses = overall.get("responses")
    if responses is not None:
        draw.text((20, 44), f"{responses} responses", fill=SUBTLE, font=small)
    for index, (label, value, interval, low, high, flagged) in enumerate(rows):
        y = TOP + index * ROW + 10

        def x(v: float, low: float = low, high: float = high) -> float:
            return BAR_LEFT + (BAR_RIGHT - BAR_LEFT) * (v - low) / (high - low)

        draw.text((20, y + 4), _fit(draw, label, font, LABEL_WIDTH), fill=INK, font=font)
        draw.rectangle((BAR_LEFT, y, BAR_RIGHT, y + 24), fill=(248, 249, 250), outline=GRID)
        origin = x(0.0) if low < 0 else BAR_LEFT
        end = x(value)
        draw.rectangle(
            (min(origin, end), y + 4, max(origin, end), y + 20), fill=LOW if flagged else GOOD
        )
        if interval is not None:
            lo, hi = x(max(low, interval[0])), x(min(high, interval[1]))
            draw.line((lo, y + 12, hi, y + 12), fill=WHISKER, width=2)
            draw.line((lo, y + 7, lo, y + 17), fill=WHISKER, width=2)
            draw.line((hi, y + 7, hi, y + 17), fill=WHISKER, width=2)
        shown = f"{value:+.0f}" if low < 0 else f"{value:.2f}"
        draw.text((BAR_RIGHT + 8, y + 4), shown, fill=INK, font=font)
    foot = (
        "Bars: mean from 1 to 5 (red: 3 or below) and eNPS from -100 to +100; lines: 95% interval"
    )
    draw.text((20, height - 26), foot, fill=SUBTLE, font=small)
    out = io.BytesIO()
    # A few flat colours: a palette image is a third of the size (Teams cards carry it inline).
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(
        out, format="PNG", optimize=True
    )
    return out.getvalue()


def results_alt(survey: Survey, report: dict[str, Any]) -> str:
    """The chart in words (alt text): each published figure."""
    overall = report["overall"]
    parts = []
    for question in survey.questions:
        summary = overall["questions"].get(question.id) or {}
        if summary.get(SUPPRESSED):
            continue
        if question.kind == "likert" and summary.get("mean") is not None:
            parts.append(f"{question.text}: {summary['mean']:.2f} of 5")
        elif question.kind == "enps" and summary.get("enps") is not None:
            parts.append(f"eNPS {summary['enps']:+.0f}")
    return f"Results of {survey.title}, run {report['number']}: " + "; ".join(parts)


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text` cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text.rstrip() + "…"
