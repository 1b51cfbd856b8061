"""Survey statistics against hand-computed values, and the suppression rule against
differencing attacks."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping

import numpy as np
import pytest

from bot.core.surveys.results import (
    UNKNOWN,
    adkar_barrier,
    choice_summary,
    enps_summary,
    likert_summary,
    multi_summary,
    suppress,
    text_summary,
    trend,
)

# Student's t quantiles t(0.975, df), from printed tables (and scipy.stats.t.ppf).
T975 = {1: 12.706205, 4: 2.776445, 9: 2.262157}


# ---------------------------------------------------------------------------- likert


def test_likert_summary_by_hand() -> None:
    # values 5, 4, 4, 3, 2 from N = 20 invited:
    #   n = 5, response rate 5/20 = 0.25, mean = 18 / 5 = 3.6
    #   deviations 1.4, 0.4, 0.4, -0.6, -1.6; squares 1.96 + 0.16 + 0.16 + 0.36 + 2.56 = 5.2
    #   s² = 5.2 / 4 = 1.3
    # interval: the answers plus one pseudo-answer at each end, 1 and 5 (7 values, sum 24):
    #   centre 24 / 7 = 3.428571; squared deviations sum to 13.714286; s'² = 13.714286 / 6 =
    #   2.285714, s' = 1.511858; SE = s' / √7 = 0.571429
    #   half width = t(0.975, 6) · SE = 2.446912 · 0.571429 = 1.398235
    #   interval (2.030336, 4.826807)
    summary = likert_summary([5, 4, 4, 3, 2], population=20)
    assert summary["n"] == 5
    assert summary["population"] == 20
    assert summary["response_rate"] == pytest.approx(0.25)
    assert summary["distribution"] == {1: 0, 2: 1, 3: 1, 4: 2, 5: 1}
    assert summary["mean"] == pytest.approx(3.6)
    assert summary["sd"] == pytest.approx(math.sqrt(1.3))
    half = 2.446912 * math.sqrt(13.714286 / 6) / math.sqrt(7)
    assert half == pytest.approx(1.398235, abs=1e-5)
    assert summary["ci95"] == pytest.approx((2.030336, 4.826807), abs=1e-5)


def test_likert_interval_stays_honest_when_everyone_answered_or_agreed() -> None:
    # n = N: the answers still measure a feeling with noise; the interval keeps its width.
    assert likert_summary([5, 4, 4, 3, 2], population=5)["ci95"] == pytest.approx(
        (2.030336, 4.826807), abs=1e-5
    )
    # Five people all at 5, of 1,000 asked: not "5.00 ± 0". Padded 5,5,5,5,5,1,5: centre
    # 31/7, s'² = 13.714286 / 6, half = 2.446912 · 1.511858 / √7 = 1.398235.
    agreed = likert_summary([5] * 5, population=1000)
    assert agreed["ci95"] == pytest.approx((31 / 7 - 1.398235, 5.0), abs=1e-5)
    # With many answers the pseudo-answers weigh little: 100 people at 5.
    assert likert_summary([5] * 100, population=1000)["ci95"][0] == pytest.approx(4.883, abs=1e-3)


def test_likert_interval_is_clipped_to_the_scale() -> None:
    # 5, 5, 5, 5, 1 padded with 1 and 5 (five 5s, two 1s): centre 27/7 = 3.857143,
    # Σ(x − centre)² = 5 · 1.142857² + 2 · 2.857143² = 22.857143, s'² = 22.857143 / 6,
    # half = 2.446912 · 1.951800 / √7 = 1.805114: (2.052029, 5.662257), and nothing above 5.
    summary = likert_summary([5, 5, 5, 5, 1], population=1000)
    assert summary["ci95"] == pytest.approx((2.052029, 5.0), abs=1e-5)


def test_likert_with_too_few_answers_has_no_interval() -> None:
    one = likert_summary([4], population=10)
    assert (one["n"], one["mean"], one["sd"], one["ci95"]) == (1, 4.0, None, None)
    none = likert_summary([], population=10)
    assert (none["n"], none["mean"], none["ci95"], none["response_rate"]) == (0, None, None, 0.0)
    assert none["distribution"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0}
    assert likert_summary([], population=0)["response_rate"] is None


@pytest.mark.parametrize("bad", [0, 6, True, 2.5])
def test_likert_refuses_values_off_the_scale(bad: object) -> None:
    with pytest.raises(ValueError, match="1 to 5"):
        likert_summary([3, bad], population=10)  # type: ignore[list-item]


def test_a_population_smaller_than_the_answers_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="population"):
        likert_summary([3, 4, 5], population=2)
    with pytest.raises(ValueError, match="population"):
        enps_summary([9, 10, 3], population=2)


# ---------------------------------------------------------------------------- eNPS


def test_enps_summary_by_hand() -> None:
    # scores 10 9 9 8 7 6 3 10 5 9 from N = 40:
    #   promoters (9–10): 10, 9, 9, 10, 9 → 5 of 10 = 0.5
    #   passives (7–8): 8, 7 → 0.2; detractors (0–6): 6, 3, 5 → 0.3
    #   eNPS = 100 · (0.5 − 0.3) = 20
    # adjusted Wald (Rocks 2016): n' = 13, P' = 5.75 / 13 = 0.442308, D' = 3.75 / 13 = 0.288462
    #   centre 0.153846; variance (0.730769 − 0.153846²) / 13 = 0.054392; sd 0.233221
    #   half = 1.959964 · 0.233221 = 0.457105: 100 · (0.153846 ± 0.457105) = (−30.326, 61.095)
    summary = enps_summary([10, 9, 9, 8, 7, 6, 3, 10, 5, 9], population=40)
    assert summary["n"] == 10
    assert summary["response_rate"] == pytest.approx(0.25)
    assert summary["promoters"] == pytest.approx(0.5)
    assert summary["passives"] == pytest.approx(0.2)
    assert summary["detractors"] == pytest.approx(0.3)
    assert summary["enps"] == pytest.approx(20.0)
    assert summary["distribution"] == {
        0: 0, 1: 0, 2: 0, 3: 1, 4: 0, 5: 1, 6: 1, 7: 1, 8: 1, 9: 3, 10: 2
    }  # fmt: skip
    assert summary["ci95"] == pytest.approx((-30.326, 61.095), abs=1e-3)


def test_enps_boundaries_six_is_a_detractor_and_nine_a_promoter() -> None:
    # 6 → −1, 7 → 0, 8 → 0, 9 → +1: P = 1/4, D = 1/4, eNPS = 0.
    summary = enps_summary([6, 7, 8, 9], population=4)
    assert (summary["promoters"], summary["passives"], summary["detractors"]) == (0.25, 0.5, 0.25)
    assert summary["enps"] == 0.0


def test_enps_extremes_and_empty() -> None:
    assert enps_summary([10, 9, 10, 9, 9], population=30)["enps"] == 100.0
    # Five promoters are not proof that everyone would promote: P' = 5.75/8, D' = 0.75/8,
    # centre 0.625, half 1.959964 · √((0.8125 − 0.390625) / 8) = 0.450085.
    low, high = enps_summary([10, 9, 10, 9, 9], population=30)["ci95"]
    assert (low, high) == (pytest.approx(17.4915, abs=1e-3), 100.0)
    # …and when all of them answered, still not (n = N keeps the width).
    assert enps_summary([10, 9, 10, 9, 9], population=5)["ci95"] == (low, high)
    assert enps_summary([0, 1, 2], population=30)["enps"] == -100.0
    empty = enps_summary([], population=30)
    assert (empty["enps"], empty["promoters"], empty["ci95"]) == (None, None, None)
    with pytest.raises(ValueError, match="0 to 10"):
        enps_summary([11], population=30)


# ---------------------------------------------------------------------------- choice, multi, text


def test_choice_summary() -> None:
    options = ("E-learning", "Live session", "None yet")
    summary = choice_summary(
        ["E-learning", "Live session", "E-learning", "None yet"], options, population=10
    )
    assert summary["n"] == 4
    assert summary["response_rate"] == pytest.approx(0.4)
    assert summary["counts"] == {"E-learning": 2, "Live session": 1, "None yet": 1}
    assert list(summary["counts"]) == list(options)  # in the options' order
    assert summary["shares"] == {"E-learning": 0.5, "Live session": 0.25, "None yet": 0.25}
    assert choice_summary([], options, population=10)["shares"]["E-learning"] is None
    with pytest.raises(ValueError, match="'Webinar' is not one of the options"):
        choice_summary(["Webinar"], options, population=10)


def test_multi_summary_counts_people_not_picks() -> None:
    # Four people; the fourth picked A twice (counted once). A: 3 of 4, B: 1, C: 1.
    summary = multi_summary([["A", "B"], ["A"], [], ["A", "A", "C"]], ["A", "B", "C"], population=8)
    assert summary["n"] == 4
    assert summary["response_rate"] == pytest.approx(0.5)
    assert summary["counts"] == {"A": 3, "B": 1, "C": 1}
    assert summary["shares"] == {"A": 0.75, "B": 0.25, "C": 0.25}
    with pytest.raises(ValueError, match="'D'"):
        multi_summary([["A", "D"]], ["A", "B", "C"], population=8)


def test_text_summary_never_keeps_the_answer_order() -> None:
    comments = [
        "  zebra crossing near bay 4 ",
        "",
        "Apple pay?",
        "   ",
        "apple pie",
        "Better training",
    ]
    expected = ["Apple pay?", "apple pie", "Better training", "zebra crossing near bay 4"]
    assert text_summary(comments) == {"n": 4, "comments": expected}
    # The output depends only on which comments there are, never on when they came.
    for order in itertools.permutations(comments):
        assert text_summary(list(order))["comments"] == expected


# ---------------------------------------------------------------------------- trend


def test_likert_trend_within_noise_is_not_flagged() -> None:
    # previous 1 2 3 4 5: mean 3, s² = 10/4 = 2.5; current 3 4 4 5 5: mean 4.2,
    #   Σ(x − 4.2)² = 1.44 + 0.04 + 0.04 + 0.64 + 0.64 = 2.8, s² = 0.7
    # Welch: SE² = 2.5/5 + 0.7/5 = 0.64, SE = 0.8, t = 1.2 / 0.8 = 1.5
    #   df = 0.64² / (0.5²/4 + 0.14²/4) = 0.4096 / 0.0674 = 6.0772
    #   two-sided p(t = 1.5, df = 6.08) = 0.1837 > 0.05: a rise of 1.2 points is still noise
    result = trend([1, 2, 3, 4, 5], [3, 4, 4, 5, 5])
    assert result["previous"] == pytest.approx(3.0)
    assert result["current"] == pytest.approx(4.2)
    assert result["change"] == pytest.approx(1.2)
    assert result["p_value"] == pytest.approx(0.1837, abs=1e-4)
    assert result["significant"] is False


def test_likert_trend_beyond_noise_is_flagged() -> None:
    # previous 1 2 2 3 2: mean 2, s² = (1 + 0 + 0 + 1 + 0)/4 = 0.5
    # current 4 4 5 4 3: mean 4, s² = (0 + 0 + 1 + 0 + 1)/4 = 0.5
    # SE² = 0.5/5 + 0.5/5 = 0.2, t = 2 / √0.2 = 4.4721
    # df = 0.2² / (0.1²/4 + 0.1²/4) = 0.04 / 0.005 = 8
    # two-sided p(t = 4.4721, df = 8) = 0.00208 < 0.05
    result = trend([1, 2, 2, 3, 2], [4, 4, 5, 4, 3], kind="likert")
    assert result["change"] == pytest.approx(2.0)
    assert result["p_value"] == pytest.approx(0.00208, abs=1e-5)
    assert result["significant"] is True
    falling = trend([4, 4, 5, 4, 3], [1, 2, 2, 3, 2])
    assert falling["change"] == pytest.approx(-2.0)
    assert falling["significant"] is True


def test_enps_trend_large_swing_in_tiny_groups_is_not_flagged() -> None:
    # previous 10 9 3 2 8 7 → +1 +1 −1 −1 0 0: mean 0 (eNPS 0), s² = 4/5 = 0.8
    # current 10 10 9 9 9 8 → five +1 and one 0: mean 5/6 (eNPS 83.33),
    #   s² = (5 · (1/6)² + (5/6)²) / 5 = (30/36) / 5 = 1/6
    # SE² = 0.8/6 + (1/6)/6 = 0.133333 + 0.027778 = 0.161111, SE = 0.401386
    # t = 0.833333 / 0.401386 = 2.0761, df = 0.161111² / (0.133333²/5 + 0.027778²/5) = 6.9967
    # two-sided p = 0.0765 > 0.05
    result = trend([10, 9, 3, 2, 8, 7], [10, 10, 9, 9, 9, 8], kind="enps")
    assert result["previous"] == pytest.approx(0.0)
    assert result["current"] == pytest.approx(83.3333, abs=1e-3)
    assert result["change"] == pytest.approx(83.3333, abs=1e-3)
    assert result["p_value"] == pytest.approx(0.0765, abs=1e-4)
    assert result["significant"] is False


def test_enps_trend_beyond_noise_is_flagged() -> None:
    # previous: 4 promoters, 6 passives, 10 detractors of 20 → mean −0.3 (eNPS −30)
    #   Σx² = 14, Σ(x − m)² = 14 − 20 · 0.09 = 12.2, s² = 12.2/19 = 0.642105
    # current: 12 promoters, 6 passives, 2 detractors → mean 0.5 (eNPS 50)
    #   Σx² = 14, Σ(x − m)² = 14 − 20 · 0.25 = 9, s² = 9/19 = 0.473684
    # SE² = (0.642105 + 0.473684) / 20 = 0.055789, SE = 0.236198, t = 0.8 / 0.236198 = 3.3870
    # df = 0.055789² / ((0.032105² + 0.023684²) / 19) = 37.15; two-sided p = 0.00168
    previous = [10] * 4 + [7] * 6 + [3] * 10
    current = [9] * 12 + [8] * 6 + [0] * 2
    result = trend(previous, current, kind="enps")
    assert result["change"] == pytest.approx(80.0)
    assert result["p_value"] == pytest.approx(0.00168, abs=1e-5)
    assert result["significant"] is True


def test_trend_edge_cases() -> None:
    # Fewer than 2 answers on either side: no test, never flagged.
    few = trend([4], [1, 2, 1])
    assert (few["change"], few["p_value"], few["significant"]) == (
        pytest.approx(-2.667, abs=1e-3),
        None,
        False,
    )
    assert trend([], [3, 4])["change"] is None
    # Both runs without spread and the same: nothing to test.
    same = trend([3, 3, 3], [3, 3, 3])
    assert (same["change"], same["p_value"], same["significant"]) == (0.0, None, False)
    # Both without spread: no test (Welch would say p = 0, "significant", from 2 answers).
    moved = trend([3, 3], [5, 5])
    assert (moved["change"], moved["p_value"], moved["significant"]) == (2.0, None, False)
    # Smaller than min_group on one side: no test either.
    small = trend([3, 4, 2, 5], [5, 4, 5, 4, 5, 4], min_group=5)
    assert (small["p_value"], small["significant"]) == (None, False)
    # One run with spread is enough for a test.
    assert trend([3, 3, 3, 3, 3], [5, 4, 5, 4, 5], min_group=5)["significant"] is True
    with pytest.raises(ValueError, match="likert or enps"):
        trend([1, 2], [1, 2], kind="choice")
    with pytest.raises(ValueError, match="1 to 5"):
        trend([9, 10], [1, 2])


# ---------------------------------------------------------------------------- suppression

NO_GROUP = "(in no group)"


def leaks(groups: Mapping[str, int], hidden: set[str], total: int, min_group: int) -> list[str]:
    """Everything about the unshown parts that adding and subtracting the published figures
    reveals, when it is a single hidden group or fewer than min_group people.

    Every published figure (a group's count, or how many in it answered 4, or the sum of its
    scores) is a sum over the people of that group, so what can be derived is exactly the
    linear combinations of the published rows: each shown group, the total (when shown), and (a stronger
    attacker than we need) every part known to be empty. A set of unshown parts can be derived
    as one lump iff its indicator vector lies in the row space of the published rows.
    """
    parts = [*groups, NO_GROUP]
    sizes = [*groups.values(), total - sum(groups.values())]
    # The overall result, unless it is itself too small (the caller hides it then).
    published = [[1.0] * len(parts)] if total >= min_group else [[0.0] * len(parts)]
    for index, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        if (part != NO_GROUP and part not in hidden) or size == 0:
            published.append([1.0 if i == index else 0.0 for i in range(len(parts))])
    rows = np.array(published)
    rank = np.linalg.matrix_rank(rows)
    unknown = [
        i
        for i, (p, s) in enumerate(zip(parts, sizes, strict=True))
        if s > 0 and (p in hidden or p == NO_GROUP)
    ]
    found = []
    for count in range(1, len(unknown) + 1):
        for subset in itertools.combinations(unknown, count):
            vector = [1.0 if i in subset else 0.0 for i in range(len(parts))]
            if np.linalg.matrix_rank(np.vstack([rows, vector])) != rank:
                continue  # not derivable
            size = sum(sizes[i] for i in subset)
            names = [parts[i] for i in subset]
            if size < min_group or (count == 1 and names[0] != NO_GROUP):
                found.append(f"{'+'.join(names)} ({size} people)")
    return found


SCENARIOS = [
    # (groups, total, min_group, hidden)
    # Every group big enough: nothing to hide.
    ({"Coventry": 10, "Dublin": 8, "Head office": 6}, None, 5, set()),
    # One small group: alone it would be total − the others, so the next smallest goes too.
    ({"Coventry": 10, "Dublin": 3, "Head office": 6}, None, 5, {"Dublin", "Head office"}),
    # Two small groups that together make min_group: the lump of 6 may be derived, no one group.
    ({"A": 3, "B": 3, "C": 10}, None, 5, {"A", "B"}),
    # Two small groups that together are still under min_group: a third goes too.
    ({"A": 2, "B": 2, "C": 10, "D": 12}, None, 5, {"A", "B", "C"}),
    # 2 people in no group (total 20) would be total − A − B: hide the smallest shown group.
    ({"A": 10, "B": 8}, 20, 5, {"B"}),
    # One small group plus 10 people in no group: still hide the next smallest (as specified;
    # people in no group may be few and known).
    ({"A": 3, "B": 10, "C": 7}, 30, 5, {"A", "C"}),
    # Empty groups reveal nothing and are never the one hidden alongside.
    ({"A": 0, "B": 3, "C": 7, "D": 9}, None, 5, {"B", "C"}),
    ({"A": 0, "B": 10, "C": 7}, None, 5, set()),
    # Ties for next smallest are broken by name.
    ({"A": 3, "C": 6, "B": 6, "D": 9}, None, 5, {"A", "B"}),
    # The total itself is under min_group: every group goes (and the caller hides the total).
    ({"A": 2, "B": 2}, 4, 5, {"A", "B"}),
    ({"A": 3}, None, 5, {"A"}),
    # min_group 2: one person is a group of one.
    ({"A": 1, "B": 5, "C": 4}, None, 2, {"A", "C"}),
    # A small remainder and a small group: hiding the small group already lumps them (2 + 4).
    ({"A": 10, "B": 4, "C": 8}, 24, 5, {"B", "C"}),
]


@pytest.mark.parametrize(("groups", "total", "min_group", "hidden"), SCENARIOS)
def test_suppress_scenarios_and_no_differencing(
    groups: dict[str, int], total: int | None, min_group: int, hidden: set[str]
) -> None:
    assert suppress(groups, min_group=min_group, total=total) == hidden
    everyone = sum(groups.values()) if total is None else total
    assert leaks(groups, hidden, everyone, min_group) == []
    # Nothing under min_group is ever shown.
    assert all(groups[name] >= min_group for name in groups if groups[name] and name not in hidden)


def test_the_attack_works_without_the_second_rule() -> None:
    # Hiding only the small group leaves it as total − the others: the checker sees it.
    groups = {"Coventry": 10, "Dublin": 3, "Head office": 6}
    assert leaks(groups, {"Dublin"}, 19, 5) == ["Dublin (3 people)"]
    assert leaks({"A": 10, "B": 8}, set(), 20, 5) == [f"{NO_GROUP} (2 people)"]
    assert leaks({"A": 2, "B": 2, "C": 10, "D": 12}, {"A", "B"}, 26, 5) == ["A+B (4 people)"]


def test_suppress_holds_for_many_random_breakdowns() -> None:
    chance = random.Random(20270215)
    for _ in range(2000):
        min_group = chance.randint(2, 7)
        groups = {f"g{i}": chance.choice([0, *range(1, 16)]) for i in range(chance.randint(1, 5))}
        total = sum(groups.values()) + chance.choice([0, 0, *range(1, 8)])
        hidden = suppress(groups, min_group=min_group, total=total)
        assert leaks(groups, hidden, total, min_group) == [], (groups, total, min_group, hidden)
        assert all(groups[n] >= min_group for n in groups if groups[n] and n not in hidden)


def test_suppress_refuses_impossible_input() -> None:
    with pytest.raises(ValueError, match="must not overlap"):
        suppress({"A": 5, "B": 5}, min_group=5, total=8)
    with pytest.raises(ValueError, match="negative"):
        suppress({"A": -1}, min_group=5)
    with pytest.raises(ValueError, match="min_group"):
        suppress({"A": 5}, min_group=0)


# ---------------------------------------------------------------------------- ADKAR


def test_adkar_barrier_is_the_first_element_at_three_or_below() -> None:
    means = {
        "awareness": 4.2,
        "desire": 3.4,
        "knowledge": 2.9,
        "ability": 2.5,
        "reinforcement": 3.8,
    }
    assert adkar_barrier(means) == "knowledge"  # ability is lower, but knowledge comes first
    assert adkar_barrier({**means, "desire": 3.0}) == "desire"  # 3.0 itself counts
    assert adkar_barrier({**means, "knowledge": 3.01, "ability": 3.5}) is None
    # A hidden element (None) before the first barrier could be the barrier: unknown.
    assert adkar_barrier({"awareness": None, "desire": 4.0, "ability": 2.0}) == UNKNOWN
    assert adkar_barrier({"awareness": math.nan, "desire": 1.0}) == UNKNOWN
    assert adkar_barrier({"awareness": 2.0, "desire": None}) == "awareness"  # found before
    assert adkar_barrier({"awareness": 4.0, "desire": None}) == UNKNOWN  # might be desire
    # Elements the survey does not measure are left out of means, and skipped.
    assert adkar_barrier({"awareness": 4.0, "ability": 2.0}) == "ability"
    assert adkar_barrier({}) is None
