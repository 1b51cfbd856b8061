"""Results from the database: small groups suppressed overall and per segment (with the next
smallest, against differencing), trends between runs, ADKAR barriers per group, the owner's DM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from bot.core.surveys.definitions import Survey
from bot.core.surveys.report import SUPPRESSED, results_message, run_results, trend_results
from tests.auxil.surveys import insert_run, load_survey

READINESS = """\
title: Readiness
anonymity: anonymous
min_group: 5
questions:
  - id: awareness
    kind: likert
    adkar: awareness
    text: I understand why we are changing.
  - id: desire
    kind: likert
    adkar: desire
    text: I want to use Compass.
  - id: recommend
    kind: enps
    text: Would you recommend Compass?
  - id: comment
    kind: text
    text: Anything else?
    optional: true
segments:
  - id: site
    label: Site
    by: channel
    values: {A: C0A, B: C0B, C: C0C}
"""


@pytest.fixture
def survey(tmp_path: Path) -> Survey:
    return load_survey(tmp_path, READINESS, name="readiness")


def answers(awareness: int, desire: int = 4, **more: Any) -> dict[str, Any]:
    return {"awareness": awareness, "desire": desire, **more}


def site(label: str | None) -> dict[str, str]:
    return {"site": label} if label else {}


# --- the overall threshold --------------------------------------------------------------------


def test_below_min_group_nothing_is_shown_not_even_a_comment(db: Engine, survey: Survey) -> None:
    run_id = insert_run(
        db,
        survey,
        invitations=[site("A")] * 10,
        responses=[(answers(2, comment="Ask Sam in payroll"), site("A"))] * 4,
    )
    report = run_results(db=db, survey=survey, run_id=run_id)

    assert report["overall"] == {"responses": 4, SUPPRESSED: True}
    assert report["segments"] == {"site": {"A": {SUPPRESSED: True}}}
    assert "Ask Sam" not in json.dumps(report)
    message = results_message(db=db, survey=survey, run_id=run_id)
    assert message.plain == (
        "*Readiness: results of run 1*\n"
        "Only 4 responses: fewer than 5, so no results are shown (that is the anonymity promise)."
    )


def test_at_min_group_the_results_are_shown(db: Engine, survey: Survey) -> None:
    run_id = insert_run(
        db,
        survey,
        invitations=[{}] * 8,
        responses=[(answers(value, comment="Ask Sam"), {}) for value in (5, 4, 4, 3, 2)],
    )
    overall = run_results(db=db, survey=survey, run_id=run_id)["overall"]

    assert (overall["responses"], overall["population"], overall["response_rate"]) == (5, 8, 0.625)
    assert overall["questions"]["awareness"]["mean"] == pytest.approx(18 / 5)
    assert overall["questions"]["comment"]["comments"] == ["Ask Sam"] * 5


# --- segments and differencing ----------------------------------------------------------------


def test_a_small_segment_hides_the_next_smallest_too(db: Engine, survey: Survey) -> None:
    # Sites A 8, B 6, C 3 answered (17 in all). C is below 5, so hidden; were B shown, C would
    # be 17 - 8 - 6 = 3 people by subtraction, so B (the smallest shown) is hidden as well.
    run_id = insert_run(
        db,
        survey,
        invitations=[site("A")] * 10 + [site("B")] * 8 + [site("C")] * 5,
        responses=[(answers(4), site("A"))] * 8
        + [(answers(2), site("B"))] * 6
        + [(answers(1), site("C"))] * 3,
    )
    report = run_results(db=db, survey=survey, run_id=run_id)

    shown = report["segments"]["site"]
    assert shown["B"] == {SUPPRESSED: True} and shown["C"] == {SUPPRESSED: True}
    assert (shown["A"]["responses"], shown["A"]["population"], shown["A"]["response_rate"]) == (
        8,
        10,
        0.8,
    )
    assert shown["A"]["questions"]["awareness"]["mean"] == 4.0
    assert report["overall"]["responses"] == 17
    assert report["overall"]["questions"]["awareness"]["mean"] == pytest.approx(
        (8 * 4 + 6 * 2 + 3 * 1) / 17
    )


def test_people_in_no_segment_cannot_be_subtracted_out(db: Engine, survey: Survey) -> None:
    # A 8, B 6, C 5 answered, and 2 people in no site (21 in all): every site is big enough,
    # but showing all three would reveal the 2 as 21 - 19. C, the smallest, is hidden, so what
    # is left over is C and the 2 together (7 people).
    run_id = insert_run(
        db,
        survey,
        invitations=[site("A")] * 8 + [site("B")] * 6 + [site("C")] * 5 + [{}] * 2,
        responses=[(answers(4), site("A"))] * 8
        + [(answers(3), site("B"))] * 6
        + [(answers(2), site("C"))] * 5
        + [(answers(1), {})] * 2,
    )
    shown = run_results(db=db, survey=survey, run_id=run_id)["segments"]["site"]

    assert shown["C"] == {SUPPRESSED: True}
    assert shown["A"]["responses"] == 8 and shown["B"]["responses"] == 6
    assert shown["B"]["questions"]["awareness"]["mean"] == 3.0


def test_the_adkar_barrier_is_found_per_group(db: Engine, survey: Survey) -> None:
    # A: awareness 2,3,2,3,3,2 → mean 2.5 ≤ 3 → barrier "awareness".
    # B: awareness 4 (mean 4.0), desire 3 (mean 3.0 ≤ 3) → barrier "desire".
    # Everyone: awareness 39/12 = 3.25, desire (6·4 + 6·3)/12 = 3.5 → no barrier.
    run_id = insert_run(
        db,
        survey,
        invitations=[site("A")] * 6 + [site("B")] * 6,
        responses=[(answers(v, 4), site("A")) for v in (2, 3, 2, 3, 3, 2)]
        + [(answers(4, 3), site("B"))] * 6,
    )
    report = run_results(db=db, survey=survey, run_id=run_id)

    assert report["overall"]["adkar_barrier"] is None
    assert report["segments"]["site"]["A"]["adkar_barrier"] == "awareness"
    assert report["segments"]["site"]["B"]["adkar_barrier"] == "desire"
    assert report["segments"]["site"]["A"]["questions"]["awareness"]["mean"] == 2.5


# --- trends -----------------------------------------------------------------------------------


def test_a_clear_change_is_flagged_and_noise_is_not(db: Engine, survey: Survey) -> None:
    # awareness, run 1: 2,2,2,3,3,2,3,2 (mean 19/8 = 2.375, s² = 1.875/7 = 0.267857)
    #            run 2: 4,4,5,4,4,5,4,4 (mean 34/8 = 4.25,  s² = 1.5/7   = 0.214286)
    #   change 1.875; Welch t = 1.875 / √(0.267857/8 + 0.214286/8) = 1.875 / 0.245495 = 7.64
    #   on ≈ 13.8 degrees of freedom: p ≈ 2e-6, flagged.
    # desire, run 1: 3,4,3,4,3,4,3,4 (mean 3.5); run 2: 4,3,4,3,4,3,4,3 (mean 3.5): change 0,
    #   p = 1, not flagged.
    first = [(2, 3), (2, 4), (2, 3), (3, 4), (3, 3), (2, 4), (3, 3), (2, 4)]
    second = [(4, 4), (4, 3), (5, 4), (4, 3), (4, 4), (5, 3), (4, 4), (4, 3)]
    runs = [
        insert_run(
            db,
            survey,
            number=number,
            invitations=[{}] * 10,
            responses=[(answers(a, d), {}) for a, d in values],
        )
        for number, values in ((1, first), (2, second))
    ]
    trend = trend_results(db=db, survey=survey, run_ids=runs)

    (awareness,) = trend["awareness"]
    assert awareness["change"] == pytest.approx(1.875)
    assert awareness["significant"] and awareness["p_value"] < 1e-4
    (desire,) = trend["desire"]
    assert desire["change"] == 0 and not desire["significant"]
    assert desire["p_value"] == pytest.approx(1.0)
    assert set(trend) == {"awareness", "desire", "recommend"}  # no trend for free text


def test_a_small_change_is_noise(db: Engine, survey: Survey) -> None:
    # run 1: 3,4,3,4,3 (mean 3.4, s² = 0.3); run 2: 4,3,4,3,4 (mean 3.6, s² = 0.3)
    #   t = 0.2 / √(0.3/5 + 0.3/5) = 0.57735 on 8 degrees of freedom: p = 0.5796
    runs = [
        insert_run(
            db,
            survey,
            number=number,
            invitations=[{}] * 5,
            responses=[(answers(v), {}) for v in values],
        )
        for number, values in ((1, (3, 4, 3, 4, 3)), (2, (4, 3, 4, 3, 4)))
    ]
    (change,) = trend_results(db=db, survey=survey, run_ids=runs)["awareness"]
    assert change["change"] == pytest.approx(0.2)
    assert change["p_value"] == pytest.approx(0.5796, abs=1e-4)
    assert not change["significant"]


def test_a_suppressed_run_takes_no_part_in_a_trend(db: Engine, survey: Survey) -> None:
    big = insert_run(db, survey, invitations=[{}] * 9, responses=[(answers(1), {})] * 9, number=1)
    small = insert_run(db, survey, invitations=[{}] * 9, responses=[(answers(5), {})] * 4, number=2)
    trend = trend_results(db=db, survey=survey, run_ids=[big, small])
    assert trend["awareness"] == [{"change": None, "significant": False}]


# --- the owner's DM ---------------------------------------------------------------------------


def test_the_results_message_reads_well(db: Engine, survey: Survey) -> None:
    # awareness 4,4,3,3,4,3 → 21/6 = 3.50; desire 3,3,3,3,2,4 → 18/6 = 3.00 (the barrier);
    # recommend 10,9,8,7,3,10 → promoters 3, detractors 1 of 6 → eNPS (3 - 1)/6 = +33.
    values = [(4, 3, 10), (4, 3, 9), (3, 3, 8), (3, 3, 7), (4, 2, 3), (3, 4, 10)]
    run_id = insert_run(
        db,
        survey,
        invitations=[{}] * 8,
        responses=[(answers(a, d, recommend=r), {}) for a, d, r in values],
    )
    message = results_message(db=db, survey=survey, run_id=run_id)

    assert message.plain.splitlines() == [
        "*Readiness: results of run 1*",
        "6 of 8 answered (75%)",
        "• I understand why we are changing. — mean *3.50* / 5",
        "• I want to use Compass. — mean *3.00* / 5",
        "• Would you recommend Compass? — eNPS *+33*",
        "ADKAR barrier point: *desire* (the first element at 3 or below)",
        "Full results: `mobilize survey results readiness --run 1` or the console's Surveys page",
    ]
    assert message.summary == "*Readiness: results of run 1*"
    (chart,) = message.images
    assert chart.png.startswith(b"\x89PNG") and chart.name == "readiness-run-1.png"
    assert chart.alt == (
        "Results of Readiness, run 1: I understand why we are changing.: 3.50 of 5; "
        "I want to use Compass.: 3.00 of 5; eNPS +33"
    )


def test_the_chart_shows_nothing_the_suppression_layer_hid(db: Engine, survey: Survey) -> None:
    # The attacker is anyone who gets the owner's DM: with fewer answers than the survey's
    # min group, no figure may reach them, in the text, the image or its alt text.
    few = [(5, 1, 10)] * (survey.min_group - 1)
    run_id = insert_run(
        db,
        survey,
        invitations=[{}] * 8,
        responses=[(answers(a, d, recommend=r), {}) for a, d, r in few],
    )
    message = results_message(db=db, survey=survey, run_id=run_id)
    assert message.images == ()
    assert "5.00" not in message.plain and "1.00" not in message.plain
