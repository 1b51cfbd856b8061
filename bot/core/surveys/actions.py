"""The checks `mobilize survey start|close|share` and the console both make before calling the
`SurveyRunner`, in one place so both refuse the same things with the same words."""

from __future__ import annotations

from bot.core.announcements.plan import parse_audience
from bot.core.surveys.privacy import SecretMissing, WrongSecret
from bot.core.surveys.runner import SurveyRunner
from bot.store.models import SurveyRun


class Refused(ValueError):
    """A survey action that cannot be done; the message says why, in plain words."""


def parse_audiences(to: str) -> list[str]:
    """`;`-separated audience parts in their normal form; ValueError names a bad part."""
    return [parse_audience(part.strip()) for part in to.split(";")]


def check_closable(runner: SurveyRunner, run: SurveyRun) -> None:
    """Refused when this process cannot close `run`: an anonymous or confidential run needs
    the secret it was started with (closing erases the link key with that secret)."""
    if run.anonymity != "named":
        try:
            runner.desk.run_key(run)
        except (SecretMissing, WrongSecret) as exc:
            raise Refused(f"cannot close: {exc}") from None


def check_shareable(run: SurveyRun) -> None:
    """Refused while `run` is open: "you said, we did" shares a closed run's results only."""
    if run.state != "closed":
        raise Refused(f"run {run.number} of {run.survey_id} is still open; share it once it closes")
