"""Deliveries in doubt on a send's page: listed, then recorded as sent or sent again through
the core's `resolve_unknown`, audited, CSRF-checked."""

from __future__ import annotations

from sqlmodel import Session, col, select
from werkzeug.test import Client

from bot.console.app import Console
from bot.service import Service
from bot.store.models import AuditLog, Delivery
from tests.auxil.running import ADMIN
from tests.console.conftest import sign_in
from tests.console.test_pages import make_send


def in_doubt(service: Service, send_id: int) -> list[int]:
    """Make every delivery of the send `unknown`, as a Teams post without an answer leaves it."""
    service.announcer.tick()  # resolve the audience: one row per person
    with Session(service.db) as session:
        rows = session.exec(
            select(Delivery).where(Delivery.send_id == send_id).order_by(col(Delivery.id))
        ).all()
        for row in rows:
            row.state, row.platform, row.attempts = "unknown", "teams", 1
        session.commit()
        return [int(row.id or 0) for row in rows]


def states(service: Service) -> dict[int, tuple[str, str]]:
    with Session(service.db) as session:
        return {int(d.id or 0): (d.state, d.error) for d in session.exec(select(Delivery)).all()}


def settles(service: Service) -> list[tuple[str, str]]:
    with Session(service.db) as session:
        rows = session.exec(select(AuditLog).where(AuditLog.action == "announce.settle")).all()
    return [(row.actor, row.detail) for row in rows]


def test_in_doubt_rows_are_listed_and_settled_one_way_or_the_other(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    send_id = make_send(service, "users:U1,U2")
    first, second = in_doubt(service, send_id)

    page = client.get(f"/console/sends/{send_id}")
    assert page.status_code == 200
    assert "In doubt (2)" in page.text
    assert f'name="delivery" value="{first}"' in page.text
    assert "Record as sent" in page.text and "Send again" in page.text

    marked = client.post(
        f"/console/sends/{send_id}/settle",
        data={"csrf": csrf, "decision": "sent", "delivery": [str(first)]},
    )
    assert marked.status_code == 303
    assert "1 in doubt of" in client.get(marked.headers["Location"]).text
    assert states(service)[first] == ("sent", "in_doubt:marked_sent")
    assert states(service)[second][0] == "unknown"

    resent = client.post(
        f"/console/sends/{send_id}/settle", data={"csrf": csrf, "decision": "resend"}
    )
    assert resent.status_code == 303
    assert states(service)[second] == ("pending", "")
    assert states(service)[first] == ("sent", "in_doubt:marked_sent")  # not touched again
    assert settles(service) == [
        (ADMIN, f"mark sent: 1 in doubt: #{first} (console)"),
        (ADMIN, f"resend: 1 in doubt: #{second} (console)"),
    ]
    after = client.get(f"/console/sends/{send_id}")
    assert "In doubt" not in after.text

    again = client.post(
        f"/console/sends/{send_id}/settle",
        data={"csrf": csrf, "decision": "sent", "delivery": [str(first)]},
    )
    assert "no longer in doubt" in client.get(again.headers["Location"]).text
    assert len(settles(service)) == 2


def test_settling_needs_a_decision_and_the_session_token(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    send_id = make_send(service, "users:U1")
    (only,) = in_doubt(service, send_id)
    forged = client.post(f"/console/sends/{send_id}/settle", data={"decision": "resend"})
    assert forged.status_code == 400
    undecided = client.post(f"/console/sends/{send_id}/settle", data={"csrf": csrf})
    assert "say whether it arrived" in client.get(undecided.headers["Location"]).text
    assert states(service)[only][0] == "unknown" and settles(service) == []
    missing = client.post("/console/sends/999/settle", data={"csrf": csrf, "decision": "sent"})
    assert missing.status_code == 404
