"""Every routing decision for what people write and click, shared by Slack, Teams and
`mobilize chat`. A platform translates its payload into a `Said` or an `Interaction`, calls
`Conversation`, and carries out the `Reply`s it gets back (or lets the core post through the
`Chat` port); it decides nothing itself.

    conversation = Conversation(desk=desk, support_channel="C0SUPPORT", admins={"U1"})
    conversation.said(Said(user_id="U2", channel="D2", text=("how do I log in?",), direct=True),
                      chat)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass

from bot.core import messages as m
from bot.core.announcements.announcer import Announcer
from bot.core.announcements.templates import Recipient, TemplateRenderError
from bot.core.faq.desk import Asker, FaqDesk
from bot.core.messages import Address, Chat, Interaction, Message, Span, plain_text
from bot.core.surveys.runs import SurveyClosed, SurveyDesk
from bot.metrics import ANSWER_SECONDS, EVENTS, QUESTIONS

log = logging.getLogger(__name__)

SURVEY_WORDS = frozenset({"pause surveys", "resume surveys", "stop surveys", "pause survey"})


@dataclass(frozen=True)
class Said:
    """Something a person wrote where the bot can read it, translated from the platform.

    `text` is what they wrote as spans (the bot's own mention left out); `direct` is a 1:1
    conversation with the bot; `mentioned` that they @mentioned the bot; `thread` the thread
    it was written in ("" at top level); `ts` the message's own id on the platform.
    """

    user_id: str
    channel: str
    text: tuple[Span, ...]
    direct: bool = False
    mentioned: bool = False
    thread: str = ""
    ts: str = ""
    platform: str = "slack"  # where it was said: "slack", "teams", "console"

    @property
    def words(self) -> str:
        return " ".join(plain_text(self.text).split())


@dataclass(frozen=True)
class Reply:
    """What to show after a click: `replace` the clicked message, or a new message where the
    click happened; `private` when only the person who clicked may see it."""

    message: Message
    replace: bool = False
    private: bool = False


class Conversation:
    """The bot's side of every conversation: questions, picks, votes, escalation and relay,
    survey answers, pause/resume, admin preview, acknowledgements."""

    def __init__(
        self,
        *,
        desk: FaqDesk,
        support_channel: str = "",
        admins: Container[str] = frozenset(),
        announcer: Announcer | None = None,
        surveys: SurveyDesk | None = None,
        support_channels: Container[str] = frozenset(),
        console: Callable[[str], Message] | None = None,
    ) -> None:
        self.desk = desk
        self.console = console  # an admin's `console`: a one-time sign-in link (bot.console)
        self.support_channel = support_channel
        self.support_channels = support_channels
        self.admins = admins
        self.announcer = announcer
        self.surveys = surveys

    # ------------------------------------------------------------------ what people write

    def ask(self, text: str, asker: Asker) -> Message:
        """The answer (or suggestions, or the offer of a person) to a question."""
        started = time.perf_counter()
        reply = self.desk.ask(text, asker)
        ANSWER_SECONDS.observe(time.perf_counter() - started)
        QUESTIONS.labels(decision=reply.decision.kind).inc()
        return reply.message

    def is_support(self, channel: str) -> bool:
        return bool(channel) and (
            channel == self.support_channel or channel in self.support_channels
        )

    def said(self, said: Said, chat: Chat) -> None:
        """Route what someone wrote: a command word, a supporter's reply in a ticket thread, or
        a question in a 1:1 chat or a mention. Anything else is not for the bot."""
        words = said.words
        command = words.lower()
        if said.direct and self.console is not None and command == "console":
            EVENTS.labels(kind="console").inc()
            chat.post(Address(said.channel), self.console(said.user_id))
            return
        if said.direct and self.surveys is not None and command in SURVEY_WORDS:
            EVENTS.labels(kind="survey_pause").inc()
            surveys = self.surveys
            reply = (
                surveys.resume(said.user_id)
                if command.startswith("resume")
                else surveys.pause(said.user_id)
            )
            chat.post(Address(said.channel), reply)
            return
        parts = words.split()
        if (
            said.direct
            and self.announcer is not None
            and len(parts) == 2
            and parts[0].lower() == "preview"
            and said.user_id in self.admins
        ):
            EVENTS.labels(kind="preview").inc()
            chat.post(Address(said.channel), self.preview(parts[1], said.user_id))
            return
        if self.is_support(said.channel) and said.thread and said.thread != said.ts:
            EVENTS.labels(kind="support_reply").inc()
            self.desk.relay_reply(
                channel=said.channel,
                thread_ts=said.thread,
                user_id=said.user_id,
                text=said.text,
                chat=chat,
            )
            return
        if said.direct:
            EVENTS.labels(kind="dm").inc()
            asker = Asker(said.user_id, said.channel, said.thread or said.ts, said.platform)
            chat.post(Address(said.channel, said.thread or None), self.ask(words, asker))
            return
        if said.mentioned:
            EVENTS.labels(kind="mention").inc()
            thread = said.thread or said.ts
            message = self.ask(words, Asker(said.user_id, said.channel, thread, said.platform))
            chat.post(Address(said.channel, thread), message)

    def preview(self, template_id: str, user_id: str) -> Message:
        """An admin's preview of a template, rendered for themselves."""
        assert self.announcer is not None
        announcer = self.announcer
        try:
            copy = announcer.preview(template_id, Recipient(user_id, "you", "you", None))
        except KeyError:
            known = ", ".join(sorted(announcer.content.templates)) or "none"
            return m.say(f"No template `{template_id[:60]}`. Templates: {known}")
        except TemplateRenderError as exc:
            return m.say(f"Template `{template_id}` does not render: {exc.reason}")
        intro = m.say(f"*Preview of `{template_id}`* (buttons do nothing here):")
        return Message((*intro.parts, *copy.parts), copy.context, copy.buttons, copy.summary)

    # ------------------------------------------------------------------ what people click

    def clicked(self, interaction: Interaction, chat: Chat) -> Reply | None:
        """Handle a click on an FAQ answer, a ticket, an announcement or a survey's pause
        button; what to show in return, if anything. Survey answers go to `answer()`."""
        area = interaction.action_id.split(".", 1)[0]
        EVENTS.labels(kind=f"{area}_action").inc()
        if area == "faq":
            return self._faq(interaction, chat)
        if area == "support":
            return self._support(interaction, chat)
        if interaction.action_id == m.ANNOUNCE_ACK:
            return self._acknowledge(interaction)
        if interaction.action_id == m.CONSOLE_OPEN:
            # Admins only; the link goes to the person's own DM, never where others see it.
            if self.console is not None and interaction.user_id in self.admins:
                chat.post(Address(interaction.user_id), self.console(interaction.user_id))
            return None
        if interaction.action_id == "survey.pause" and self.surveys is not None:
            return Reply(self.surveys.pause(interaction.user_id))
        return None  # link buttons and the like: nothing to do

    def answer(self, *, user_id: str, run_id: int, question_id: str, value: object) -> Reply | None:
        """Store a survey answer; the invitation as it now reads (to replace the clicked one),
        or a private notice when the run has closed. None for a value that is not an answer."""
        if self.surveys is None:
            return None
        try:
            copy = self.surveys.answer(
                run_id=run_id, user_id=user_id, question_id=question_id, value=value
            )
        except SurveyClosed as exc:
            return Reply(m.say(str(exc)), private=True)
        except ValueError:
            return None
        return Reply(copy, replace=True)

    def _faq(self, interaction: Interaction, chat: Chat) -> Reply | None:
        desk, value, user = self.desk, interaction.value, interaction.user_id
        action = interaction.action_id
        if action == m.FAQ_APPROVE:
            if user in self.admins:
                log.info("admin %s approves pick %s", user, value)
                desk.approve_pick(value, user)
            return None
        if action in (m.FAQ_PICK, m.FAQ_RELATED):
            return Reply(desk.pick(value, user))
        if action == m.FAQ_NONE:
            return Reply(desk.none_of_these(value, user))
        if action in (m.FAQ_HELPFUL, m.FAQ_NOT_HELPFUL):
            return Reply(desk.vote(value, user, helpful=action == m.FAQ_HELPFUL))
        if action == m.FAQ_HUMAN:
            return Reply(desk.escalate(value, user, chat))
        return None

    def _support(self, interaction: Interaction, chat: Chat) -> Reply | None:
        desk, value, user = self.desk, interaction.value, interaction.user_id
        if interaction.action_id == m.SUPPORT_CLAIM:
            desk.claim(value, user, chat)
        elif interaction.action_id == m.SUPPORT_RESOLVE:
            desk.resolve(value, user, chat)
        elif interaction.action_id == m.SUPPORT_SAVE:
            return Reply(desk.save_as_faq(value, user), private=True)
        return None

    def _acknowledge(self, interaction: Interaction) -> Reply | None:
        if self.announcer is None:
            return None
        try:
            send_id = int(interaction.value)
        except ValueError:
            return None
        copy = self.announcer.acknowledge(send_id=send_id, user_id=interaction.user_id)
        return Reply(copy, replace=True) if copy is not None else None
