"""Block Kit rendering: escaping, Markdown, Slack's limits."""

from __future__ import annotations

from bot.channels.slack.render import escape, markdown_to_mrkdwn, to_blocks, to_payload
from bot.core.messages import Button, say, user_text


def test_user_text_cannot_mention_channel_or_fake_links() -> None:
    blocks = to_payload(
        say("Question:", user_text("<!channel> & <https://evil.example|your bank> *hi*"))
    )
    text = blocks["blocks"][1]["text"]["text"]
    assert text == "&lt;!channel&gt; &amp; &lt;https://evil.example|your bank&gt; *hi*"
    assert "<!" not in str(blocks)


def test_escape_does_not_use_html_entities_for_quotes() -> None:
    assert escape('it\'s "fine" <b>') == 'it\'s "fine" &lt;b&gt;'


def test_trusted_markdown_becomes_mrkdwn_but_never_broadcasts() -> None:
    text = "# Title\n**Bold** and [the portal](https://compass.example/a?b=1&c=2)\n- one\n<!here> <@U123> a < b"
    assert markdown_to_mrkdwn(text) == (
        "*Title*\n*Bold* and <https://compass.example/a?b=1&c=2|the portal>\n• one\n"
        "&lt;!here&gt; <@U123> a &lt; b"
    )


def test_long_answers_split_within_the_section_limit() -> None:
    body = "\n\n".join(f"Paragraph {i} " + "word " * 120 for i in range(20))
    blocks = [b.to_dict() for b in to_blocks(say(body))]
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) > 1
    assert all(len(b["text"]["text"]) <= 3000 for b in sections)
    assert "".join(b["text"]["text"] for b in sections).replace(" ", "").replace(
        "\n", ""
    ) == body.replace(" ", "").replace("\n", "")


def test_buttons_get_unique_action_ids_and_short_labels() -> None:
    message = say(
        "Pick", buttons=(Button("x" * 100, "faq.pick", "1:a"), Button("Other", "faq.pick", "1:b"))
    )
    actions = [b.to_dict() for b in to_blocks(message)][-1]
    ids = [element["action_id"] for element in actions["elements"]]
    assert ids == ["faq.pick:0", "faq.pick:1"]
    assert len(actions["elements"][0]["text"]["text"]) <= 75
