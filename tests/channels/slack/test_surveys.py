"""Pulse surveys end to end: the real Service over HTTP, Slack faked on loopback. Invitations
go out through the outbox; answers come back as signed block_actions and view_submission
requests, exactly as Slack sends them."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.store.models import SurveyInvitation
from tests.auxil.running import RunningBot, block_text, bot_settings, running_bot
from tests.auxil.surveys import QUICK, write
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.signing import FORM_CONTENT_TYPE, action_body, block_action, post, signed_headers

OWNER = "U3"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def bot(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[RunningBot]:
    write(content_dir, "messages/surveys/quick.yaml", QUICK)
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_SEND_RATE=1000,
        MOBILIZE_SURVEY_SECRET="slack-test-secret",
    )
    with running_bot(settings, slack) as running:
        yield running


def start(bot: RunningBot, audience: str = "users:U1,U2") -> int:
    """What `mobilize survey start` and the running bot's next tick and workers do."""
    run_id = bot.service.surveys.start_adhoc(survey_id="quick", audience=[audience], by=OWNER)
    bot.service.surveys.tick()
    while bot.service.announcer.outbox.drain_once(batch=50):
        pass
    return run_id


def invitation(slack: FakeSlack, user: str = "U1") -> dict[str, Any]:
    (message,) = [m for m in slack.messages.get(f"D{user}", []) if "Quick pulse" in m["text"]]
    return message


def elements(blocks: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        element
        for block in blocks
        if block["type"] == "actions"
        for element in block["elements"]
        if element["type"] == kind
    ]


def labelled(blocks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    (found,) = [b for b in elements(blocks, "button") if b["text"]["text"] == label]
    return found


def act(bot: RunningBot, message: dict[str, Any], action: dict[str, Any], user: str = "U1") -> None:
    """A block_actions request for `action` on `message` in `user`'s DM; Slack needs a 200."""
    payload = block_action(
        action_id=action["action_id"],
        value="",
        user_id=user,
        channel_id=f"D{user}",
        message_ts=message["ts"],
    )
    payload["message"]["blocks"] = message["blocks"]
    payload["actions"] = [{"block_id": "b", "action_ts": f"{time.time():.6f}", **action}]
    body = action_body(payload)
    status, _ = post(bot.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE))
    assert status == 200


def click(
    bot: RunningBot, message: dict[str, Any], button: dict[str, Any], user: str = "U1"
) -> None:
    act(bot, message, {"type": "button", **button}, user)


def submit_comment(bot: RunningBot, view: dict[str, Any], text: str, user: str = "U1") -> str:
    """The modal's Save button: a view_submission request; returns the response body."""
    payload = {
        "type": "view_submission",
        "team": {"id": "T1", "domain": "example"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T1"},
        "api_app_id": "A1",
        "token": "legacy-verification-token",
        "trigger_id": "111.222.def",
        "view": {
            **view,
            "state": {"values": {"comment": {"text": {"type": "plain_text_input", "value": text}}}},
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    body = action_body(payload)
    status, answer = post(
        bot.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE)
    )
    assert status == 200
    return answer


def updates(slack: FakeSlack, count: int) -> list[Call]:
    return slack.wait_for("chat.update", count=count)


def test_the_invitation_is_one_dm_with_every_question_answerable(
    bot: RunningBot, slack: FakeSlack
) -> None:
    start(bot)
    message = invitation(slack)
    blocks = message["blocks"]

    assert [b["text"]["text"] for b in elements(blocks, "button")][:5] == [
        "1 Strongly disagree",
        "2",
        "3",
        "4",
        "5 Strongly agree",
    ]
    (select_,) = elements(blocks, "static_select")
    assert [o["text"]["text"] for o in select_["options"]] == [str(n) for n in range(11)]
    (boxes,) = elements(blocks, "checkboxes")
    assert [o["text"]["text"] for o in boxes["options"]] == ["Guides", "Champions", "My manager"]
    labelled(blocks, "Write a comment")
    labelled(blocks, "Pause surveys for me")
    text = block_text(blocks)
    assert "*Quick pulse*" in text
    assert "Anonymous." in text and "groups of 2 or more" in text
    assert invitation(slack, "U2")["ts"] != message["ts"]


def test_answers_by_button_select_and_checkboxes_are_stored_and_shown(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start(bot)
    message = invitation(slack)
    desk = bot.service.surveys.desk

    click(bot, message, labelled(message["blocks"], "4"))
    (update,) = updates(slack, 1)
    assert update.params["ts"] == message["ts"] and update.params["channel"] == "DU1"
    assert "✓ _4 – Agree_" in block_text(update.params["blocks"])
    chosen = labelled(update.params["blocks"], "4")
    assert chosen.get("style") == "primary"
    assert desk.answers(run_id, "U1") == {"ready": 4}

    (select_,) = elements(message["blocks"], "static_select")
    nine = next(o for o in select_["options"] if o["text"]["text"] == "9")
    act(
        bot,
        message,
        {
            "type": "static_select",
            "action_id": select_["action_id"],
            "selected_option": nine,
            "placeholder": select_["placeholder"],
        },
    )
    update = updates(slack, 2)[-1]
    (shown,) = elements(update.params["blocks"], "static_select")
    assert shown["initial_option"]["value"] == nine["value"]

    (boxes,) = elements(message["blocks"], "checkboxes")
    picked = [o for o in boxes["options"] if o["text"]["text"] != "Champions"]
    act(
        bot,
        message,
        {"type": "checkboxes", "action_id": boxes["action_id"], "selected_options": picked},
    )
    update = updates(slack, 3)[-1]
    assert "✓ _Guides, My manager_" in block_text(update.params["blocks"])
    assert desk.answers(run_id, "U1") == {
        "ready": 4,
        "recommend": 9,
        "helped": ["Guides", "My manager"],
    }

    # Unticking every box clears the answer: Slack then sends no option at all.
    act(
        bot,
        message,
        {"type": "checkboxes", "action_id": boxes["action_id"], "selected_options": []},
    )
    updates(slack, 4)
    assert desk.answers(run_id, "U1")["helped"] == []

    click(bot, message, labelled(message["blocks"], "2"))  # a change of mind
    updates(slack, 5)
    assert desk.answers(run_id, "U1")["ready"] == 2
    with Session(bot.service.db) as session:
        answered = {r.user_id: r.answered for r in session.exec(select(SurveyInvitation))}
    assert answered == {"U1": False, "U2": False}  # anonymous: nobody's answering is recorded


def test_a_comment_is_written_in_a_modal(bot: RunningBot, slack: FakeSlack) -> None:
    run_id = start(bot)
    message = invitation(slack)

    click(bot, message, labelled(message["blocks"], "Write a comment"))
    (opened,) = slack.wait_for("views.open")
    view = opened.params["view"]
    assert opened.params["trigger_id"] == "111.222.abc"
    assert view["callback_id"] == "survey.comment_modal"
    assert view["blocks"][0]["label"]["text"] == "Anything else?"
    assert "initial_value" not in view["blocks"][0]["element"]

    assert submit_comment(bot, view, "Please keep the drop-in sessions <3") == ""
    (update,) = updates(slack, 1)
    assert update.params["ts"] == message["ts"]
    assert "✓ _Please keep the drop-in sessions &lt;3_" in block_text(update.params["blocks"])
    assert bot.service.surveys.desk.answers(run_id, "U1") == {
        "comment": "Please keep the drop-in sessions <3"
    }

    click(bot, message, labelled(update.params["blocks"], "Edit my comment"))
    reopened = slack.wait_for("views.open", count=2)[-1]
    element = reopened.params["view"]["blocks"][0]["element"]
    assert element["initial_value"] == "Please keep the drop-in sessions <3"


def test_after_the_close_a_click_gets_a_polite_notice(bot: RunningBot, slack: FakeSlack) -> None:
    run_id = start(bot)
    message = invitation(slack)
    click(bot, message, labelled(message["blocks"], "Write a comment"))
    (opened,) = slack.wait_for("views.open")
    assert bot.service.surveys.close(run_id)
    results = slack.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == OWNER)
    assert "results of run 1" in results[0].params["text"]

    click(bot, message, labelled(message["blocks"], "5 Strongly agree"))
    (notice,) = slack.wait_for("chat.postEphemeral")
    assert notice.params["user"] == "U1" and notice.params["channel"] == "DU1"
    assert "This survey closed on" in notice.params["text"]
    assert "Thank you anyway!" in notice.params["text"]

    answer = json.loads(submit_comment(bot, opened.params["view"], "Too late?"))
    assert answer["response_action"] == "errors"
    assert "This survey closed on" in answer["errors"]["comment"]
    assert bot.service.surveys.desk.answers(run_id, "U1") == {}
    assert slack.calls_to("chat.update") == []


def test_pause_surveys_by_dm_means_no_invitation_next_time(
    bot: RunningBot, slack: FakeSlack
) -> None:
    start(bot)
    assert bot.dm("pause surveys", user="U2")[0] == 200
    (reply,) = slack.wait_for(
        "chat.postMessage",
        where=lambda c: c.params["channel"] == "DU2" and "Done" in c.params["text"],
    )
    assert "resume surveys" in reply.params["text"]

    later = bot.service.surveys.clock() + timedelta(days=8)  # a week on: everyone may be asked
    bot.service.surveys.clock = bot.service.surveys.desk.clock = lambda: later
    second = start(bot)
    with Session(bot.service.db) as session:
        invited = session.exec(
            select(SurveyInvitation.user_id).where(SurveyInvitation.run_id == second)
        ).all()
    assert invited == ["U1"]
    assert len([m for m in slack.messages["DU2"] if "Quick pulse" in m["text"]]) == 1

    assert bot.dm("resume surveys", user="U2")[0] == 200
    slack.wait_for("chat.postMessage", where=lambda c: "Welcome back" in c.params["text"])


def test_the_pause_button_pauses(bot: RunningBot, slack: FakeSlack) -> None:
    start(bot)
    message = invitation(slack)
    click(bot, message, labelled(message["blocks"], "Pause surveys for me"))
    (reply,) = slack.wait_for(
        "chat.postMessage",
        where=lambda c: c.params["channel"] == "DU1" and "Done" in c.params["text"],
    )
    assert "won't get survey invitations" in reply.params["text"]


def _answered_and_closed(bot: RunningBot, slack: FakeSlack) -> None:
    run_id = start(bot)
    for user, label in (("U1", "4"), ("U2", "2")):
        message = invitation(slack, user)
        click(bot, message, labelled(message["blocks"], label), user=user)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(
        bot.service.surveys.desk.answers(run_id, user).get("ready") for user in ("U1", "U2")
    ):
        time.sleep(0.05)
    assert bot.service.surveys.close(run_id)


def test_the_owners_results_dm_carries_a_chart_image(bot: RunningBot, slack: FakeSlack) -> None:
    _answered_and_closed(bot, slack)
    results = slack.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == OWNER)
    assert "results of run 1" in results[0].params["text"]
    (shared,) = slack.wait_for("files.completeUploadExternal")
    assert shared.response["ok"] and shared.params["channel_id"] == f"D{OWNER}"
    (chart,) = slack.files.values()
    assert chart["channel"] == f"D{OWNER}" and chart["name"] == "quick-run-1.png"
    assert chart["data"].startswith(b"\x89PNG\r\n\x1a\n") and len(chart["data"]) == chart["length"]
    assert "I feel ready for Compass.: 3.00 of 5" in chart["alt_txt"]
    # The chart comes after the text in the owner's DM, as Slack shows a shared file.
    dm = slack.messages[f"D{OWNER}"]
    assert [bool(m.get("files")) for m in dm][-2:] == [False, True]


def test_without_files_write_the_results_still_arrive_and_the_error_is_counted(
    database_url: str, content_dir: Path
) -> None:
    from tests.slack.rules import manifest_scopes

    write(content_dir, "messages/surveys/quick.yaml", QUICK)
    with FakeSlack(scopes=manifest_scopes() - {"files:write"}) as slack:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            MOBILIZE_SEND_RATE=1000,
            MOBILIZE_SURVEY_SECRET="slack-test-secret",
        )
        with running_bot(settings, slack) as bot:
            _answered_and_closed(bot, slack)
            results = slack.wait_for(
                "chat.postMessage", where=lambda c: c.params["channel"] == OWNER
            )
            assert "results of run 1" in results[0].params["text"]
            (refused,) = slack.wait_for("files.getUploadURLExternal")
            assert refused.response["error"] == "missing_scope"
            assert not slack.files
            metrics = urllib.request.urlopen(f"{bot.base}/metrics").read().decode()
            assert (
                'mobilize_slack_errors_total{error="missing_scope",'
                'method="files.getUploadURLExternal"}' in metrics
            )
