"""Teams message text → the core's spans."""

from __future__ import annotations

from bot.channels.teams.text import MentionEntity, parse
from bot.core.messages import Link, Mention

BOT = "28:bot"
MENTIONS = (
    MentionEntity("<at>Mobilize</at>", BOT, "Mobilize"),
    MentionEntity("<at>Bob Brown</at>", "29:1bob", "Bob Brown"),
)


def test_the_bots_mention_is_dropped_and_others_kept() -> None:
    spans = parse("<at>Mobilize</at> ask <at>Bob Brown</at> about it", MENTIONS, bot_id=BOT)
    assert spans == ("ask ", Mention("29:1bob", "Bob Brown"), " about it")


def test_html_is_reduced_to_text_with_links_and_entities_decoded() -> None:
    html = (
        '<p>Try <a href="https://compass.example/reset?a=1&amp;b=2">the <b>reset</b> page</a>'
        " &amp; tell me&nbsp;if it works.</p><p>Second&lt;line&gt;<br>third</p>"
    )
    assert parse(html) == (
        "Try ",
        Link("https://compass.example/reset?a=1&b=2", "the reset page"),
        " & tell me if it works.\n\nSecond<line>\nthird",
    )


def test_unsafe_links_untagged_mentions_and_channels_are_plain_text() -> None:
    spans = parse(
        '<a href="javascript:alert(1)">click</a> <at>Nobody</at> <at>General</at>',
        (MentionEntity("<at>General</at>", "19:abc@thread.tacv2", "General"),),
    )
    assert spans == ("click @Nobody @General",)


def test_bare_addresses_become_links() -> None:
    assert parse("see https://compass.example/help.") == (
        "see ",
        Link("https://compass.example/help"),
        ".",
    )
