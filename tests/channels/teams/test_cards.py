"""The Adaptive Card renderer: every Message feature, checked by the loopback connector's card
rules (what Teams renders) and posted through it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from bot.channels.teams.auth import BotTokens
from bot.channels.teams.cards import MAX_ACTIVITY_BYTES, escape, to_card
from bot.channels.teams.chat import TeamsChat
from bot.channels.teams.refs import References
from bot.core.messages import (
    Address,
    Button,
    Checkboxes,
    Choice,
    Image,
    Link,
    Mention,
    Message,
    Row,
    Select,
    say,
    user_text,
)
from bot.store.db import make_engine, upgrade
from tests.channels.teams.conftest import card_text, entities, titles
from tests.teams import rules
from tests.teams.fake_connector import FakeTeams

EVERYTHING = say(
    "# Go-live\n\n*Compass* goes live on **Monday**. See [the guide](https://compass.example/guide)"
    " and <https://compass.example/faq|the FAQ>.\n\n- sign in\n- check your payslip\n\n"
    "1. first\n2. second\n\n`code_with_underscores`",
    user_text(
        (
            "Try *this* [not a link](javascript:alert(1)) <at>Eve</at> @here ",
            Link("https://compass.example/reset?a=1&b=(2)", "the [reset] page"),
            " or ask ",
            Mention("29:1chika", "Chika Sato"),
            "\n- not a list item",
        )
    ),
    context=("From the FAQ: _How do I…?_ · IT Service Desk", "Review due 31 Mar 2027"),
    buttons=(
        Button("Helpful", "faq.helpful", "1:x", style="primary"),
        Button("Remove", "faq.not_helpful", "1:x", style="danger"),
        Button("Open Compass", "announce.link", "", url="https://compass.example/"),
        Button("Bad link", "announce.link", "", url="javascript:alert(1)"),
    ),
    rows=(
        Row(
            "*1.* I understand why we are moving to Compass.",
            tuple(Button(str(n), "survey.answer", f"7|awareness|{n}") for n in range(1, 6)),
        ),
        Row(
            "*2.* How likely are you to recommend Compass?",
            (
                Select(
                    "0 = not at all … 10 = extremely",
                    "survey.answer",
                    tuple(Choice(str(n), f"7|recommend|{n}") for n in range(11)),
                    "7|recommend|9",
                ),
            ),
        ),
        Row(
            "*3.* Which did you use?",
            (
                Checkboxes(
                    "survey.answer",
                    (
                        Choice("Payslips, P60s", "7|used|Payslips, P60s"),
                        Choice("Leave", "7|used|Leave"),
                    ),
                    ("7|used|Leave",),
                ),
            ),
        ),
    ),
    summary="Go-live is **Monday**",
)


def people(key: str) -> tuple[str, str] | None:
    return {"29:1chika": ("29:1chika", "Chika Sato")}.get(key)


def test_every_message_feature_renders_as_teams_takes_it() -> None:
    rendered = to_card(EVERYTHING, people=people)
    card = rendered.card
    rules.check_card(card)  # version 1.5, known elements, required fields, unique input ids
    rules.check_attachments(rendered.activity()["attachments"])
    text = card_text(card)
    assert "**Go-live**" in text  # no headings in Teams: a bold line
    assert "**Compass** goes live on **Monday**" in text
    assert "[the guide](https://compass.example/guide)" in text
    assert "[the FAQ](https://compass.example/faq)" in text
    assert "- sign in\n- check your payslip" in text and "1. first\n2. second" in text
    assert "code\\_with\\_underscores" in text
    # What a person wrote: shown as written, only their real link and mention are live.
    assert "Try \\*this\\* \\[not a link\\](javascript:alert(1)) <\u200bat>Eve<\u200b/at>" in text
    assert "[the \\[reset\\] page](https://compass.example/reset?a=1&b=%282%29)" in text
    assert "<at>Chika Sato</at>" in text and "\\- not a list item" in text
    assert entities(card) == [
        {
            "type": "mention",
            "text": "<at>Chika Sato</at>",
            "mentioned": {"id": "29:1chika", "name": "Chika Sato"},
        }
    ]
    small = [b for b in card["body"] if b.get("isSubtle")]
    assert [b["text"] for b in small] == [
        "From the FAQ: _How do I…?_ · IT Service Desk",
        "Review due 31 Mar 2027",
    ]
    assert all(b["size"] == "Small" for b in small)
    top = card["actions"]
    assert [a["type"] for a in top] == ["Action.Execute", "Action.Execute", "Action.OpenUrl"]
    assert top[0] == {
        "type": "Action.Execute",
        "title": "Helpful",
        "verb": "faq.helpful",
        "data": {"value": "1:x"},
        "style": "positive",
    }
    assert top[1]["style"] == "destructive" and top[2]["url"] == "https://compass.example/"
    likert, enps, used = [b for b in card["body"] if b["type"] == "Container"]
    assert titles(likert) == ["1", "2", "3", "4", "5"]
    choice = enps["items"][1]
    assert (choice["type"], choice["style"], choice["value"]) == ("Input.ChoiceSet", "compact", "9")
    assert enps["items"][2]["actions"][0]["data"] == {
        "input": choice["id"],
        "options": [f"7|recommend|{n}" for n in range(11)],
    }
    boxes = used["items"][1]
    assert boxes["isMultiSelect"] is True and boxes["style"] == "expanded" and boxes["value"] == "1"
    assert [c["value"] for c in boxes["choices"]] == ["0", "1"]  # indexes: values may hold commas
    assert rendered.summary == "Go-live is Monday"


def test_long_text_is_split_and_kept_under_the_size_limit() -> None:
    paragraph = "Compass keeps your documents safe. " * 40
    long = say("\n\n".join([paragraph] * 30), "[a link](https://compass.example/" + "x" * 50 + ")")
    card = to_card(long).card
    rules.check_card(card)
    blocks = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]
    assert len(blocks) > 3 and all(len(b) <= 4000 for b in blocks)
    huge = say("word " * 60_000)
    cut = to_card(huge).card
    assert len(json.dumps(cut).encode()) <= MAX_ACTIVITY_BYTES
    assert "shortened" in card_text(cut)


def test_a_person_id_in_trusted_text_becomes_a_mention_never_a_raw_id() -> None:
    message = say("Claimed by 29:1chika", context=("Asked by 29:1unknown",))
    card = to_card(message, people=people).card
    assert "Claimed by <at>Chika Sato</at>" in card_text(card)
    assert "29:1unknown" not in card_text(card)


def test_escape_breaks_markup_but_keeps_words() -> None:
    assert escape("a *b* _c_ [d](e)") == "a \\*b\\* \\_c\\_ \\[d\\](e)"
    assert escape("1. one\n2. two") == "1\\. one\n\n2\\. two"


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[tuple[TeamsChat, FakeTeams]]:
    with FakeTeams() as teams:
        db = make_engine(f"sqlite:///{tmp_path / 'cards.db'}")
        upgrade(db)
        refs = References(db)
        tokens = BotTokens(
            app_id=teams.app_id,
            app_password=teams.identity.app_password,
            token_url=teams.identity.token_url,
        )
        chat = TeamsChat(
            tokens=tokens, refs=refs, tenant_id=teams.tenant_id, default_service_url=teams.url
        )
        try:
            yield chat, teams
        finally:
            chat.close()
            db.dispose()


def test_the_connector_takes_every_card_and_updates_it_in_place(
    chat: tuple[TeamsChat, FakeTeams],
) -> None:
    teams_chat, teams = chat
    alice = teams.user("alice")
    posted = teams_chat.post(Address(alice.id), EVERYTHING)  # a person: their 1:1 chat is opened
    assert posted is not None
    stored = teams.activity(posted.ts)
    assert stored.conversation_id == teams.directory.personal_conversation_id(alice)
    teams_chat.update(posted, Message((user_text("updated"),)))
    assert card_text(teams.activity(posted.ts)) == "updated"
    assert [c.operation for c in teams.calls] == [
        "CreateConversation",
        "SendToConversation",
        "UpdateActivity",
    ]
    assert len(teams.identity.calls_to("Token")) == 1  # the token is cached


def test_an_image_travels_inside_the_card_or_is_left_out_with_a_note() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000
    chart = Image(png, "Results of Quick pulse, run 1: ready 3.00 of 5", "quick-run-1.png")
    card = to_card(replace(say("*Quick pulse: results of run 1*"), images=(chart,))).card
    (image,) = [block for block in card["body"] if block["type"] == "Image"]
    assert image["url"] == "data:image/png;base64," + base64.b64encode(png).decode()
    assert image["altText"] == chart.alt

    huge = Image(b"\x89PNG" + bytes(range(256)) * 400, "too big", "huge.png")
    card = to_card(replace(say("*Results*", "The text stays whole."), images=(huge,))).card
    assert not [block for block in card["body"] if block["type"] == "Image"]
    shown = json.dumps(card)
    assert "The text stays whole." in shown and "too large for a Teams card" in shown
