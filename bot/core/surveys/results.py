"""Survey statistics on plain values: a summary per question, the trend between two runs, the
ADKAR barrier point, and `suppress()`, which decides which groups may be shown at all. No
database here: pass the answers in, apply `suppress()` before showing any group.

Statistical choices, in one place:

- **Interval (`ci95`) of a Likert mean**: Student's t with n + 1 degrees of freedom on the
  answers plus two pseudo-answers, one at each end of the scale (1 and 5): the "add two"
  adjustment for a bounded mean, in the spirit of Agresti–Coull for proportions. Without it the
  interval collapses to a point when everyone gives the same answer (s = 0), which claims a
  certainty five people cannot give. No finite-population correction: the question is how a
  group feels, which a re-run next week would measure with fresh noise, not how these n people
  clicked; so when everyone answered (n = N) the interval still has a width. No interval for
  n ≤ 1. Bounds are clipped to the scale. The interval covers sampling noise only, treating
  those who answered as a random draw; it cannot correct for who chooses not to answer.
- **eNPS**: % promoters (9–10) − % detractors (0–6), from the raw 0–10 scores. Its interval is
  the adjusted Wald interval of Rocks (2016, "Interval estimation for the Net Promoter Score"):
  add 3/4 of a promoter, 3/2 of a passive and 3/4 of a detractor, then P' − D' ± z ·
  √((P' + D' − (P' − D')²) / (n + 3)). Like Wilson's interval it keeps a width when everyone is
  a promoter, and it stays inside −100 … 100.
- **Trend**: Welch's t-test (unequal variances, `scipy.stats.ttest_ind(equal_var=False)`) on the
  raw answers of two runs, on 1–5 for Likert and on the +1/0/−1 scores for eNPS; a change is
  flagged only when p < 0.05. Only between runs each with at least `min_group` answers and with
  some spread in at least one of them (two runs without any spread give no test, not p = 0).
  Runs are compared as independent samples because anonymous answers cannot be paired; many of
  the same people answer both, which makes the test conservative. With 7 questions over 10
  runs some flags will be chance: read them as prompts, not verdicts.
- **Suppression**: see `suppress()`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot.core.surveys.definitions import ADKAR

ALPHA = 0.05  # the significance level for flagging a change
CONFIDENCE = 0.95
BARRIER = 3.0  # an ADKAR element averaging this or below is the barrier point
LIKERT = (1, 2, 3, 4, 5)
ENPS = tuple(range(11))
PROMOTER = 9  # 9 and 10
DETRACTOR = 6  # 0 to 6
UNKNOWN = "unknown"  # the ADKAR barrier when an earlier element is hidden


def likert_summary(values: Sequence[int], *, population: int) -> dict[str, Any]:
    """Summarise 1–5 answers from `population` people asked: `n`, `population`,
    `response_rate` (None when nobody was asked), `distribution` {1..5: count}, `mean`, `sd`
    and `ci95` (lo, hi) (None when there are too few answers; see the module docstring)."""
    n = len(values)
    rate = _rate(n, population)
    _check(values, LIKERT, "a likert answer is 1 to 5")
    mean = sum(values) / n if n else None
    sd = _sd(values)
    return {
        "n": n,
        "population": population,
        "response_rate": rate,
        "distribution": {point: values.count(point) for point in LIKERT},
        "mean": mean,
        "sd": sd,
        "ci95": _likert_interval(values),
    }


def enps_summary(scores: Sequence[int], *, population: int) -> dict[str, Any]:
    """Summarise 0–10 answers: `n`, `population`, `response_rate`, `distribution` {0..10:
    count}, the shares `promoters` (9–10), `passives` (7–8) and `detractors` (0–6), `enps` =
    100 · (promoters − detractors) and its `ci95` (None when there are too few answers)."""
    n = len(scores)
    rate = _rate(n, population)
    _check(scores, ENPS, "an eNPS answer is 0 to 10")
    points = _enps_points(scores)
    promoters = points.count(1) / n if n else None
    detractors = points.count(-1) / n if n else None
    passives = points.count(0) / n if n else None
    mean = sum(points) / n if n else None
    interval = _enps_interval(points)
    return {
        "n": n,
        "population": population,
        "response_rate": rate,
        "distribution": {score: scores.count(score) for score in ENPS},
        "promoters": promoters,
        "passives": passives,
        "detractors": detractors,
        "enps": 100 * mean if mean is not None else None,
        "ci95": (100 * interval[0], 100 * interval[1]) if interval else None,
    }


def choice_summary(
    values: Sequence[str], options: Sequence[str], *, population: int
) -> dict[str, Any]:
    """Summarise pick-one answers: `n`, `population`, `response_rate`, `counts` and `shares`
    (of those who answered; None when nobody did) per option, in the options' order."""
    n = len(values)
    rate = _rate(n, population)
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of the options")
    counts = {option: values.count(option) for option in options}
    return {
        "n": n,
        "population": population,
        "response_rate": rate,
        "counts": counts,
        "shares": {option: count / n if n else None for option, count in counts.items()},
    }


def multi_summary(
    values: Sequence[Sequence[str]], options: Sequence[str], *, population: int
) -> dict[str, Any]:
    """Summarise pick-any answers (one list of picks per person): `n` people, `population`,
    `response_rate`, and per option the `counts` of people who picked it and their `shares`
    of `n` (these add up to more than 1 when people pick several)."""
    n = len(values)
    rate = _rate(n, population)
    picked = [set(answer) for answer in values]
    unknown = sorted(set().union(*picked) - set(options)) if picked else []
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of the options")
    counts = {option: sum(option in answer for answer in picked) for option in options}
    return {
        "n": n,
        "population": population,
        "response_rate": rate,
        "counts": counts,
        "shares": {option: count / n if n else None for option, count in counts.items()},
    }


def text_summary(comments: Sequence[str]) -> dict[str, Any]:
    """The free-text answers worth showing: `n` and `comments`, blank ones dropped, sorted
    alphabetically (case-insensitive).

    Never in the order given: answers arrive in the order people answered, and that order set
    beside the invitation ledger or Slack activity ("the last comment came in at 16:02, just
    after Sam's reminder") could tie a comment to a person. Sorting makes the output depend
    only on which comments there are, not when they came.
    """
    kept = [comment.strip() for comment in comments if comment and comment.strip()]
    kept.sort(key=lambda comment: (comment.casefold(), comment))
    return {"n": len(kept), "comments": kept}


def trend(
    previous: Sequence[int],
    current: Sequence[int],
    *,
    kind: str = "likert",
    alpha: float = ALPHA,
    min_group: int = 2,
) -> dict[str, Any]:
    """Compare the raw answers of two runs of one Likert or eNPS question.

    Returns `previous` and `current` (mean, or eNPS), `change` (current − previous; eNPS
    points for eNPS), `p_value` (Welch's t-test; None when either run has fewer than
    `min_group` (at least 2) answers or neither run shows any spread) and `significant`
    (p < alpha)."""
    if kind == "likert":
        _check(previous, LIKERT, "a likert answer is 1 to 5")
        _check(current, LIKERT, "a likert answer is 1 to 5")
        before, after, scale = list(previous), list(current), 1.0
    elif kind == "enps":
        _check(previous, ENPS, "an eNPS answer is 0 to 10")
        _check(current, ENPS, "an eNPS answer is 0 to 10")
        before, after, scale = _enps_points(previous), _enps_points(current), 100.0
    else:
        raise ValueError(f"trend compares likert or enps answers, not {kind}")
    was = scale * sum(before) / len(before) if before else None
    now = scale * sum(after) / len(after) if after else None
    change = now - was if was is not None and now is not None else None
    p_value: float | None = None
    enough = min(len(before), len(after)) >= max(2, min_group)
    spread = len(set(before)) > 1 or len(set(after)) > 1
    if enough and spread:
        from scipy import stats  # ~1 s and ~60 MB: imported when a report needs it

        with warnings.catch_warnings():
            # scipy warns about precision when one sample has no spread; the result is right.
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.ttest_ind(after, before, equal_var=False)
        p = float(result.pvalue)
        p_value = None if math.isnan(p) else p
    return {
        "previous": was,
        "current": now,
        "change": change,
        "p_value": p_value,
        "significant": p_value is not None and p_value < alpha,
    }


def suppress(groups: Mapping[str, int], *, min_group: int, total: int | None = None) -> set[str]:
    """The names of the groups whose results must not be shown.

    `groups` maps each group of one breakdown (e.g. each site) to how many people answered in
    it; the groups must not overlap. `total` is how many answered overall (default: the sum),
    which may exceed the sum when some people are in no group. The overall result is assumed to
    be shown; hide it yourself when `total < min_group`.

    The rule:

    1. Hide every group with 0 < size < min_group (an empty group reveals nothing).
    2. Anyone can work out "everyone not shown" as the total minus the shown groups (counts,
       and every answer count or sum, subtract the same way). So while that unshown part is
       itself 0 < size < min_group, or exactly one group is hidden for being small (as the
       unshown part it is that group, plus people in no group, who may be few and known),
       also hide the smallest group still shown (ties: by name).

    What is then derivable by adding and subtracting shown figures is the shown groups and the
    unshown part as one lump of 0 or at least min_group people mixing two or more hidden
    groups (or a hidden group and the people in no group): never a single hidden group. This
    holds per breakdown only: results go through `bot.core.surveys.report`, whose check covers
    every breakdown, every question and the whole run together.
    """
    if min_group < 1:
        raise ValueError("min_group must be 1 or more")
    if any(size < 0 for size in groups.values()):
        raise ValueError("group sizes cannot be negative")
    grouped = sum(groups.values())
    total = grouped if total is None else total
    if total < grouped:
        raise ValueError(
            f"the groups hold {grouped} people but the total is {total}: groups must not overlap"
        )
    hidden = {name for name, size in groups.items() if 0 < size < min_group}
    while True:
        shown = [name for name, size in groups.items() if size > 0 and name not in hidden]
        unshown = total - sum(groups[name] for name in shown)
        lone_small = len(hidden) == 1 and all(groups[name] < min_group for name in hidden)
        if not shown or not (0 < unshown < min_group or lone_small):
            return hidden
        hidden.add(min(shown, key=lambda name: (groups[name], name)))


def adkar_barrier(means: Mapping[str, float | None]) -> str | None:
    """The barrier point: the first ADKAR element, in order (awareness, desire, knowledge,
    ability, reinforcement), whose mean is 3.0 or below; None when every mean is above.
    `means` holds the elements the survey measures; one whose mean is None (hidden, or nobody
    answered) could be the barrier, so when it comes before any known barrier the answer is
    `UNKNOWN`, never a later element. Elements the survey does not measure are left out of
    `means` and skipped."""
    for element in ADKAR:
        if element not in means:
            continue
        mean = means[element]
        if mean is None or math.isnan(mean):
            return UNKNOWN
        if mean <= BARRIER:
            return element
    return None


# ---------------------------------------------------------------------------- helpers


def _check(values: Iterable[int], allowed: Sequence[int], reason: str) -> None:
    for value in values:
        if isinstance(value, bool) or value not in allowed:
            raise ValueError(f"{reason}, not {value!r}")


def _rate(n: int, population: int) -> float | None:
    if population < n:
        raise ValueError(f"{n} answers from a population of {population}: population is too small")
    return n / population if population else None


def _sd(values: Sequence[int]) -> float | None:
    """The sample standard deviation (divisor n − 1); None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))


def _likert_interval(values: Sequence[int]) -> tuple[float, float] | None:
    """t interval on the answers plus one pseudo-answer at each end of the scale."""
    n = len(values)
    if n < 2:
        return None
    padded = [*values, LIKERT[0], LIKERT[-1]]
    centre = sum(padded) / len(padded)
    sd = _sd(padded)
    assert sd is not None
    from scipy import stats

    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(padded) - 1)) * sd / math.sqrt(len(padded))
    return (max(1.0, centre - half), min(5.0, centre + half))


def _enps_interval(points: Sequence[int]) -> tuple[float, float] | None:
    """Rocks' adjusted Wald interval for P − D (as a fraction), clipped to −1 … 1."""
    n = len(points)
    if n < 2:
        return None
    total = n + 3
    promoters = (points.count(1) + 0.75) / total
    detractors = (points.count(-1) + 0.75) / total
    centre = promoters - detractors
    variance = max(0.0, promoters + detractors - centre**2) / total
    from scipy import stats

    half = float(stats.norm.ppf((1 + CONFIDENCE) / 2)) * math.sqrt(variance)
    return (max(-1.0, centre - half), min(1.0, centre + half))


def _enps_points(scores: Sequence[int]) -> list[int]:
    """+1 for a promoter (9–10), 0 for a passive (7–8), −1 for a detractor (0–6)."""
    return [1 if score >= PROMOTER else -1 if score <= DETRACTOR else 0 for score in scores]
