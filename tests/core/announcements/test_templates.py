"""Announcement templates: loading with file:line errors, per-recipient rendering, Block Kit."""

from __future__ import annotations

import json
import re
import urllib.parse
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from bot.channels.slack.render import preview_blocks_url, to_payload
from bot.core.announcements.templates import (
    ANNOUNCE_ACK,
    ANNOUNCE_LINK,
    CHANNEL_AUDIENCE,
    SAMPLE_USER,
    LinkButton,
    Recipient,
    Template,
    TemplateRenderError,
    defang,
    load_templates,
    render,
    template_context,
)
from bot.core.content import Rollout, load_rollout
from bot.core.messages import Button

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
ROLLOUT = Rollout(
    name="Compass",
    timezone="Europe/London",
    milestones={
        "training_opens": date(2027, 2, 15),
        "go_live": date(2027, 4, 6),
        "hypercare_ends": date(2027, 5, 14),
    },
    links={"portal": "https://compass.example/", "training": "https://compass.example/learn"},
)
EXAMPLES = {
    "training-opens": "training_opens",
    "training-reminder": "training_deadline",
    "go-live-countdown": "go_live",
    "go-live-day": "go_live",
    "peopledesk-read-only": "data_freeze",
    "hypercare-check-in": "first_payroll",
    "hypercare-ends": "hypercare_ends",
}
ALICE = Recipient("U0ALICE", "Alice Jones", "Alice", "Europe/London")


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / "messages" / "announcements" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_one(tmp_path: Path, text: str, name: str = "a.md") -> Template:
    write(tmp_path, name, text)
    templates, errors = load_templates(tmp_path, ROLLOUT, now=NOW)
    assert errors == []
    return templates[Path(name).stem]


def errors_of(tmp_path: Path, text: str, name: str = "a.md") -> list[str]:
    write(tmp_path, name, text)
    templates, errors = load_templates(tmp_path, ROLLOUT, now=NOW)
    assert templates == {}
    return [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]


def example_rollout() -> Rollout:
    rollout, errors = load_rollout(ROOT)
    assert errors == []
    return rollout


# --- the example rollout ------------------------------------------------------------------


def test_example_templates_load_without_errors() -> None:
    templates, errors = load_templates(ROOT, example_rollout(), now=NOW)
    assert [str(error) for error in errors] == []
    assert set(templates) == set(EXAMPLES)
    assert templates["peopledesk-read-only"].ack
    assert templates["training-opens"].links[0] == LinkButton(
        "Start the course", "{{ links.training }}"
    )


@pytest.mark.parametrize("template_id", sorted(EXAMPLES))
@pytest.mark.parametrize("user", [SAMPLE_USER, CHANNEL_AUDIENCE], ids=["dm", "channel"])
def test_example_templates_are_valid_block_kit_on_their_day(
    template_id: str, user: Recipient
) -> None:
    rollout = example_rollout()
    templates, _errors = load_templates(ROOT, rollout, now=NOW)
    day = rollout.milestones[EXAMPLES[template_id]]
    now = datetime(day.year, day.month, day.day, 9, 0, tzinfo=UTC)
    message = render(templates[template_id], rollout, user=user, now=now, ack_value="d-1")
    payload = to_payload(message)  # validates every block with slack_sdk's models
    body = message.parts[-1].body
    assert len(re.findall(r"[\w'’]+", body)) <= 120, "examples stay short"
    assert f"Hi {user.first_name}" in body or f"morning {user.first_name}" in body
    assert "{{" not in json.dumps(payload) and "{%" not in json.dumps(payload)
    assert all(button.url for button in message.buttons if button.action_id == ANNOUNCE_LINK)


@pytest.mark.parametrize("days_before", [29, 14, 8, 2, 1, 0])
def test_countdown_reads_well_every_day(days_before: int) -> None:
    rollout = example_rollout()
    templates, _errors = load_templates(ROOT, rollout, now=NOW)
    go_live = rollout.milestones["go_live"]
    now = datetime(go_live.year, go_live.month, go_live.day, 9, tzinfo=UTC)
    message = render(
        templates["go-live-countdown"],
        rollout,
        user=SAMPLE_USER,
        now=now - timedelta(days=days_before),
    )
    expected = {
        29: "29 days until Compass goes live",
        14: "14 days until Compass goes live",
        8: "8 days until Compass goes live",
        2: "2 days until Compass goes live",
        1: "Compass goes live tomorrow",
        0: "Compass goes live today",
    }[days_before]
    assert message.summary == expected
    assert " 1 days" not in message.plain and " 1 weeks" not in message.plain


# --- loading errors -------------------------------------------------------------------------

GOOD_FRONT = "---\ntitle: Hello\nowner: Compass Programme\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no front matter\n", "a.md:1: missing front matter"),
        ("---\ntitle: [oops\nowner: X\n---\nbody\n", "a.md:3: invalid YAML"),
        ("---\n- a list\n---\nbody\n", "a.md:2: front matter must be a mapping"),
        ("---\nowner: X\n---\nbody\n", "a.md:2: missing title"),
        ("---\ntitle: Hello\n---\nbody\n", "a.md:2: missing owner"),
        ("---\ntitle: Hello\nowner: ''\n---\nbody\n", "a.md:3: missing owner"),
        ("---\ntitle: 2027\nowner: X\n---\nbody\n", "a.md:2: title must be text"),
        (GOOD_FRONT + "colour: red\n---\nbody\n", "a.md:4: unknown key 'colour'"),
        (GOOD_FRONT + "---\n\n", "a.md:5: empty body"),
        (GOOD_FRONT + "buttons: yes\n---\nbody\n", "a.md:4: buttons must be a list"),
        (GOOD_FRONT + "buttons:\n  - Click me\n---\nbody\n", "a.md:5: a button is a mapping"),
        (
            GOOD_FRONT + "buttons:\n  - label: Go\n---\nbody\n",
            "a.md:5: a button needs a url (a link) or ack",
        ),
        (
            GOOD_FRONT + "buttons:\n  - url: https://x.example/\n---\nbody\n",
            "a.md:5: a link button needs a label",
        ),
        (
            GOOD_FRONT + "buttons:\n  - label: Go\n    url: https://x.example/\n    ack: Read\n"
            "---\nbody\n",
            "a.md:5: a button is a link (label and url) or an acknowledgement (ack), not both",
        ),
        (
            GOOD_FRONT + "buttons:\n  - label: Go\n    url: https://x.example/\n    colour: red\n"
            "---\nbody\n",
            "a.md:7: unknown button key 'colour'",
        ),
        (
            GOOD_FRONT + "buttons:\n  - ack: I've read this\n  - label: Go\n"
            "    url: https://x.example/\n  - ack: Got it\n---\nbody\n",
            "a.md:8: only one ack button per announcement",
        ),
        (
            GOOD_FRONT + "buttons:\n  - ack: true\n---\nbody\n",
            "a.md:5: ack: give the button's label",
        ),
        (
            GOOD_FRONT + "buttons:\n  - label: " + "x" * 76 + "\n    url: https://x.example/\n"
            "---\nbody\n",
            "a.md:5: button label is over 75 characters",
        ),
        (
            GOOD_FRONT + "buttons:\n  - label: Go\n    url: compass.example/learn\n---\nbody\n",
            "a.md:6: button 'Go': url must start with https:// or http://",
        ),
        (
            GOOD_FRONT + "buttons:\n  - label: Go\n    url: {{ links.portal }}\n---\nbody\n",
            'a.md:6: invalid YAML: while constructing a mapping found unhashable key (a value that starts with {{ must be quoted: url: "{{ links.training }}")',
        ),
        (
            GOOD_FRONT + "---\nline one\n{{ milestones.golive | longdate }}\n",
            "a.md:6: template: 'dict object' has no attribute 'golive'",
        ),
        (
            GOOD_FRONT + "---\nHi {{ user.frist_name }}\n",
            "a.md:5: template: 'dict object' has no attribute 'frist_name'",
        ),
        (
            GOOD_FRONT + 'buttons:\n  - label: Go\n    url: "{{ links.portl }}"\n---\nbody\n',
            "a.md:6: template: 'dict object' has no attribute 'portl'",
        ),
        (
            '---\ntitle: "{{ rollout.nme }} is here"\nowner: X\n---\nbody\n',
            "a.md:2: template: 'dict object' has no attribute 'nme'",
        ),
        (GOOD_FRONT + "---\nfine\n{% if %}\n", "a.md:6: template:"),
        (
            GOOD_FRONT + "---\nfine\n{{ days_until('golive') }} days\n",
            "a.md:6: template: no milestone named 'golive'",
        ),
        (
            # The sample user never takes this branch; the name is still checked.
            GOOD_FRONT + "---\nfine\n{% if user.tz == 'Mars' %}{{ usr.first_name }}{% endif %}\n",
            "a.md:6: template: 'usr' is undefined",
        ),
        ("---\ntitle: \"{{ '' }}\"\nowner: X\n---\nbody\n", "a.md:2: title renders empty"),
    ],
)
def test_mistakes_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    found = errors_of(tmp_path, text)
    assert any(error.startswith(expected) for error in found), found


def test_a_file_name_that_is_not_an_id_is_an_error(tmp_path: Path) -> None:
    found = errors_of(tmp_path, GOOD_FRONT + "---\nbody\n", name="Go Live.md")
    assert found == [
        "Go Live.md:1: file name 'Go Live.md': use lower-case letters, digits, '-' and '_' "
        "(the template's id is the name without .md)"
    ]


def test_every_mistake_in_a_file_is_reported(tmp_path: Path) -> None:
    text = (
        "---\ncolour: red\nbuttons:\n  - label: Go\n  - ack: Read\n  - ack: Again\n---\n"
        "{{ nope }}\n"
    )
    assert errors_of(tmp_path, text) == [
        "a.md:2: unknown key 'colour' (known: title, owner, buttons)",
        "a.md:2: missing title: the notification and heading",
        "a.md:2: missing owner: who is accountable for it",
        "a.md:4: a button needs a url (a link) or ack (an acknowledgement)",
        "a.md:6: only one ack button per announcement",
        "a.md:8: template: 'nope' is undefined",
    ]


def test_no_folder_means_no_templates(tmp_path: Path) -> None:
    assert load_templates(tmp_path, ROLLOUT, now=NOW) == ({}, [])


# --- rendering -------------------------------------------------------------------------------

BUTTONS = (
    'buttons:\n  - label: Start\n    url: "{{ links.training }}?from={{ user.id }}"\n'
    "  - ack: I've read this\n"
)


def test_render_builds_the_message(tmp_path: Path) -> None:
    template = load_one(
        tmp_path,
        '---\ntitle: "{{ rollout.name }} training is open"\nowner: Learning & Development\n'
        + BUTTONS
        + "---\nHi {{ user.first_name }} ({{ user.name }}), go live is "
        "{{ milestones.go_live | longdate }}.\n",
    )
    message = render(template, ROLLOUT, user=ALICE, now=NOW, ack_value="delivery-7")
    assert [part.body for part in message.parts] == [
        "*Compass training is open*",
        "Hi Alice (Alice Jones), go live is Tuesday 6 April 2027.",
    ]
    assert all(part.trusted for part in message.parts)
    assert message.summary == "Compass training is open"
    assert message.context == ("From Learning & Development",)
    assert message.buttons == (
        Button("Start", ANNOUNCE_LINK, url="https://compass.example/learn?from=U0ALICE"),
        Button("I've read this", ANNOUNCE_ACK, value="delivery-7", style="primary"),
    )


def test_acknowledged_replaces_the_button_with_a_line(tmp_path: Path) -> None:
    template = load_one(tmp_path, GOOD_FRONT + BUTTONS + "---\nbody\n")
    message = render(template, ROLLOUT, user=ALICE, now=NOW, acknowledged=True)
    assert [button.action_id for button in message.buttons] == [ANNOUNCE_LINK]
    assert message.context == ("From Compass Programme", "✓ You acknowledged this")
    assert "✓ You acknowledged this" in json.dumps(to_payload(message), ensure_ascii=False)


def test_without_ack_there_is_no_ack_button(tmp_path: Path) -> None:
    template = load_one(tmp_path, GOOD_FRONT + "---\nbody\n")
    assert not template.ack
    for acknowledged in (False, True):
        message = render(template, ROLLOUT, user=ALICE, now=NOW, acknowledged=acknowledged)
        assert message.buttons == ()
        assert message.context == ("From Compass Programme",)


COUNTING = (
    GOOD_FRONT + "---\n{{ today }} {{ days_until('go_live') }} {{ weeks_until('go_live') }} "
    "{{ days_since('training_opens') }}\n"
)


def test_days_are_counted_from_the_recipients_own_date(tmp_path: Path) -> None:
    template = load_one(tmp_path, COUNTING)
    # 12:00 UTC on 5 April: 13:00 in London, already 02:00 on 6 April in Kiritimati (UTC+14).
    now = datetime(2027, 4, 5, 12, 0, tzinfo=UTC)
    kiritimati = Recipient("U0KIRI", "Tabu Teiti", "Tabu", "Pacific/Kiritimati")
    london = render(template, ROLLOUT, user=ALICE, now=now).parts[-1].body
    island = render(template, ROLLOUT, user=kiritimati, now=now).parts[-1].body
    channel = render(template, ROLLOUT, user=CHANNEL_AUDIENCE, now=now).parts[-1].body
    assert london == "2027-04-05 1 0 49"
    assert island == "2027-04-06 0 0 50"
    assert channel == london  # no zone: the rollout's


def test_an_unknown_zone_falls_back_to_the_rollouts(tmp_path: Path) -> None:
    template = load_one(tmp_path, COUNTING)
    now = datetime(2027, 4, 5, 23, 30, tzinfo=UTC)  # 00:30 on 6 April in London (BST)
    user = Recipient("U0X", "X", "X", "Mars/Olympus_Mons")
    assert render(template, ROLLOUT, user=user, now=now).parts[-1].body == "2027-04-06 0 0 50"


def test_weeks_until_is_floored() -> None:
    weeks_until = template_context(ROLLOUT, user=ALICE, now=NOW)["weeks_until"]
    # 1 March → 6 April is 36 days; 7 April 2027 would be 37; after go-live it goes negative.
    assert weeks_until("go_live") == 5
    later = template_context(ROLLOUT, user=ALICE, now=datetime(2027, 4, 7, 9, tzinfo=UTC))
    assert later["weeks_until"]("go_live") == -1
    assert later["days_since"]("go_live") == 1


def test_an_empty_first_name_still_reads_well(tmp_path: Path) -> None:
    template = load_one(tmp_path, GOOD_FRONT + "---\nHi {{ user.first_name }}!\n")
    nameless = Recipient("U0NONAME", "", "", None)
    assert render(template, ROLLOUT, user=nameless, now=NOW).parts[-1].body == "Hi there!"


def test_a_failure_for_a_real_recipient_is_a_template_render_error(tmp_path: Path) -> None:
    # "Sam Sample" has a surname; "Cher" has not.
    template = load_one(
        tmp_path, GOOD_FRONT + "---\nDear Mx {{ user.name.split()[1] }}\n", name="surname.md"
    )
    assert "Mx Sample" in render(template, ROLLOUT, user=SAMPLE_USER, now=NOW).plain
    with pytest.raises(TemplateRenderError) as caught:
        render(template, ROLLOUT, user=Recipient("U0CHER", "Cher", "Cher"), now=NOW)
    assert caught.value.template_id == "surname"
    assert caught.value.reason.startswith("body: ")
    assert "'surname'" in str(caught.value)


def test_a_url_that_goes_bad_for_a_recipient_is_a_template_render_error(tmp_path: Path) -> None:
    template = load_one(
        tmp_path,
        GOOD_FRONT + "buttons:\n  - label: Local\n"
        "    url: \"{{ 'https://x.example/' + user.tz if user.tz else 'nowhere' }}\"\n---\nbody\n",
    )
    with pytest.raises(TemplateRenderError, match="button 'Local': url must start with https"):
        render(template, ROLLOUT, user=CHANNEL_AUDIENCE, now=NOW)


def test_a_template_built_in_code_renders_too() -> None:
    template = Template(
        id="inline",
        title="Hello {{ user.first_name }}",
        owner="Ops",
        body="Go: {{ links.portal }}",
        links=(LinkButton("Open", "{{ links.portal }}"),),
        ack_label=None,
        path=Path("inline.md"),
        body_line=1,
    )
    message = render(template, ROLLOUT, user=ALICE, now=NOW)
    assert message.summary == "Hello Alice"
    assert message.buttons[0].url == "https://compass.example/"


# --- hostile names ---------------------------------------------------------------------------

HOSTILE = [
    "<!channel>",
    "<!here|here>",
    "<@U0BOSS>",
    "<#C0GENERAL>",
    "<https://evil.example|Reset your password>",
    "[Reset your password](https://evil.example)",
    "@channel",
    "\x000\x00 & friends",
    "Line\n# Heading\n- bullet",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_display_name_is_shown_harmlessly(tmp_path: Path, name: str) -> None:
    template = load_one(
        tmp_path,
        '---\ntitle: "Hello {{ user.first_name }}"\nowner: X\n---\n'
        "Hi {{ user.first_name }}, *{{ user.name }}*, [portal]({{ links.portal }}).\n",
    )
    message = render(template, ROLLOUT, user=Recipient("U0EVIL", name, name), now=NOW)
    payload = to_payload(message)
    texts = [payload["text"]] + [
        block["text"]["text"] for block in payload["blocks"] if block["type"] == "section"
    ]
    for text in texts:
        tokens = re.findall(r"<[^<>]*>", text)
        assert all(token.startswith("<https://compass.example/") for token in tokens), text
        assert "<https://evil" not in text and "@channel" not in text
        assert "\x00" not in text and "\n#" not in text
    # The name is still recognisable.
    assert defang(name).strip("‹› ")[:3] in texts[-1]


def test_defang_keeps_ordinary_names_and_maps_look_alikes() -> None:
    assert defang("Zoë O'Brien-Smith") == "Zoë O'Brien-Smith"
    assert defang("<!channel>") == "‹!channel›"
    assert defang("[a](https://x)") == "(a)(https://x)"
    assert defang("sam@x") == "sam＠x"
    assert defang(" two\n lines\t") == "two lines"


def test_an_ampersand_in_a_name_is_escaped_once() -> None:
    template = Template(
        id="amp",
        title="Hi",
        owner="X",
        body="Hi {{ user.name }}",
        links=(),
        ack_label=None,
        path=Path("amp.md"),
        body_line=1,
    )
    message = render(template, ROLLOUT, user=Recipient("U0", "Tom & Jerry", "Tom"), now=NOW)
    assert to_payload(message)["blocks"][1]["text"]["text"] == "Hi Tom &amp; Jerry"


# --- preview ---------------------------------------------------------------------------------


def test_preview_url_round_trips() -> None:
    templates, _errors = load_templates(ROOT, example_rollout(), now=NOW)
    message = render(
        templates["peopledesk-read-only"], example_rollout(), user=SAMPLE_USER, now=NOW
    )
    blocks = to_payload(message)["blocks"]
    url = preview_blocks_url(blocks)
    prefix = "https://app.slack.com/block-kit-builder/#"
    assert url.startswith(prefix)
    assert " " not in url and "\n" not in url
    assert json.loads(urllib.parse.unquote(url.removeprefix(prefix))) == {"blocks": blocks}
