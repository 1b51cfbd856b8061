"""Results for 10,000 survey responses across 10 runs, computed in under a second.

The example `readiness` survey (six Likert questions tagged with ADKAR, an eNPS and a comment,
broken down by site and department) gets 10 runs of 1,200 invitations and 1,000 responses
each: random answers from a fixed seed, every person in a site and a department (one small
department, so suppression has work to do), a comment from one in five. The requirement: the
results of every run (`run_results`: every question, overall and per segment, with
suppression) plus the trend across the 10 runs (`trend_results`) take under one second in all.
Run from the repository root:

    .venv/bin/python benchmarks/survey_results.py [--runs 10] [--responses 1000] [--seed 7]
                                                  [--database-url postgresql+psycopg://…]

SQLite (a temporary file) by default; with --database-url postgresql+psycopg://… the run uses a
private schema in that database and drops it afterwards. Exits 1 at one second or more.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python benchmarks/survey_results.py`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, insert, text  # noqa: E402
from sqlmodel import col  # noqa: E402

from bot.core.surveys.definitions import Survey, load_surveys  # noqa: E402
from bot.core.surveys.report import SUPPRESSED, run_results, trend_results  # noqa: E402
from bot.store.db import make_engine, upgrade  # noqa: E402
from bot.store.models import SurveyInvitation, SurveyResponse, SurveyRun  # noqa: E402

LIMIT = 1.0  # seconds for every run's results and the trend
SITES = {"Coventry DC": 0.5, "Dublin office": 0.3, "Head office": 0.2}
DEPARTMENTS = {"Warehouse": 0.45, "Transport": 0.25, "HR": 0.12, "Finance": 0.12, "Legal": 0.006}
COMMENTS = ["More drop-in sessions, please.", "The app is slow on the kiosks.", "All good so far."]


@contextmanager
def database(url: str, folder: Path) -> Iterator[str]:
    """A SQLite file in `folder` by default; on PostgreSQL a private schema, dropped after."""
    if not url:
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    if not url.startswith("postgresql"):
        raise SystemExit("--database-url takes a postgresql+psycopg://… URL")
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def answers(rng: random.Random, survey: Survey, shift: float) -> dict[str, Any]:
    """One person's answers: Likert around 3 (drifting up by `shift` over the runs), an eNPS
    score, a comment from one in five; now and then a question left out."""
    found: dict[str, Any] = {}
    for question in survey.questions:
        if rng.random() < 0.05:
            continue
        if question.kind == "likert":
            found[question.id] = min(5, max(1, round(rng.gauss(2.8 + shift, 1.0))))
        elif question.kind == "enps":
            found[question.id] = min(10, max(0, round(rng.gauss(6.5 + 2 * shift, 2.0))))
        elif question.kind == "text" and rng.random() < 0.2:
            found[question.id] = rng.choice(COMMENTS)
    return found


def populate(db: Engine, survey: Survey, *, runs: int, responses: int, seed: int) -> list[int]:
    """`runs` closed runs with 1.2 × `responses` invitations and `responses` responses each."""
    rng = random.Random(seed)
    start = datetime(2027, 2, 16, 10, 0, tzinfo=UTC)
    run_ids = []
    with db.begin() as connection:
        for number in range(1, runs + 1):
            begins = start + timedelta(weeks=2 * (number - 1))
            run_id = connection.execute(
                insert(SurveyRun)
                .values(
                    key=f"{survey.id}@{begins:%Y-%m-%dT%H:%M}",
                    survey_id=survey.id,
                    number=number,
                    anonymity=survey.anonymity,
                    min_group=survey.min_group,
                    audience='["everyone"]',
                    state="closed",
                    starts_at=begins,
                    closes_at=begins + timedelta(days=5),
                    reminder_days="[2, 4]",
                    population=int(responses * 1.2),
                    owner="",
                    created_by="benchmark",
                )
                .returning(col(SurveyRun.id))
            ).scalar_one()
            run_ids.append(int(run_id or 0))
            people = [
                {"site": pick(rng, SITES), "department": pick(rng, DEPARTMENTS)}
                for _ in range(int(responses * 1.2))
            ]
            connection.execute(
                insert(SurveyInvitation),
                [
                    {
                        "run_id": run_id,
                        "user_id": f"U{n:06d}",
                        "channel": "",
                        "ts": "",
                        "segments": json.dumps(segments),
                        "answered": n < responses,
                        "reminders": 0,
                    }
                    for n, segments in enumerate(people)
                ],
            )
            shift = 0.15 * (number - 1)
            connection.execute(
                insert(SurveyResponse),
                [
                    {
                        "id": secrets.token_hex(16),
                        "run_id": run_id,
                        "respondent_key": None,
                        "user_id": None,
                        "segments": json.dumps(people[n]),
                        "answers": json.dumps(answers(rng, survey, shift)),
                    }
                    for n in range(responses)
                ],
            )
    return run_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs (10)")
    parser.add_argument("--responses", type=int, default=1000, help="responses per run (1000)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (7)")
    parser.add_argument(
        "--database-url", default="", help="a scratch database (default: a temporary SQLite file)"
    )
    args = parser.parse_args(argv)

    surveys, errors = load_surveys(ROOT)
    if errors:
        raise SystemExit("\n".join(str(error) for error in errors))
    survey = surveys["readiness"]
    with (
        tempfile.TemporaryDirectory(prefix="mobilize-bench-") as tmp,
        database(args.database_url, Path(tmp)) as url,
    ):
        db = make_engine(url)
        upgrade(db)
        try:
            started = time.perf_counter()
            run_ids = populate(db, survey, runs=args.runs, responses=args.responses, seed=args.seed)
            filled = time.perf_counter() - started
            run_results(db=db, survey=survey, run_id=run_ids[0])  # warm the connection pool

            timings: list[tuple[str, float, dict[str, Any]]] = []
            total_started = time.perf_counter()
            for run_id in run_ids:
                started = time.perf_counter()
                report = run_results(db=db, survey=survey, run_id=run_id)
                timings.append((f"run {report['number']}", time.perf_counter() - started, report))
            started = time.perf_counter()
            trend = trend_results(db=db, survey=survey, run_ids=run_ids)
            trend_seconds = time.perf_counter() - started
            total = time.perf_counter() - total_started
        finally:
            db.dispose()

    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    responses = args.runs * args.responses
    print(
        f"{responses:,} responses in {args.runs} runs of the readiness survey "
        f"({len(survey.questions)} questions, 2 segments); {backend}, {os.cpu_count()} cores; "
        f"written in {filled:.1f} s"
    )
    print()
    print(f"{'':10} {'seconds':>8}  {'awareness':>9}  {'eNPS':>5}  barrier    suppressed groups")
    for name, seconds, report in timings:
        overall = report["overall"]
        hidden = [
            f"{segment}={label}"
            for segment, groups in report["segments"].items()
            for label, group in groups.items()
            if group.get(SUPPRESSED)
        ]
        mean = overall["questions"]["awareness"]["mean"]
        enps = overall["questions"]["recommend"]["enps"]
        barrier = overall["adkar_barrier"] or "none"
        print(
            f"{name:10} {seconds:8.3f}  {mean:9.2f}  {enps:+5.0f}  {barrier:10} "
            f"{', '.join(hidden) or '—'}"
        )
    flagged = sum(change["significant"] for series in trend.values() for change in series)
    changes = sum(len(series) for series in trend.values())
    print(f"{'trend':10} {trend_seconds:8.3f}  ({flagged} of {changes} changes flagged)")
    print()
    passed = total < LIMIT
    print(
        f"  all results and the trend: {total:.3f} s (< {LIMIT:g} s)  {'ok' if passed else 'FAILED'}"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
