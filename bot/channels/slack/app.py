"""The Bolt app: thin listeners that ack, translate the payload and call the core."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from slack_bolt import Ack, App, BoltResponse, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlalchemy import Engine

from bot.channels.slack.chat import SlackChat, call, slack_error_code
from bot.channels.slack.clicks import ACKS_FIRST, Confirmations, respond
from bot.channels.slack.render import action_id_of, to_blocks, to_payload
from bot.channels.slack.server import EarlyAcks
from bot.channels.slack.text import parse, question
from bot.core import messages as m
from bot.core.announcements.announcer import Announcer
from bot.core.conversation import Conversation, Said
from bot.core.faq.desk import Asker, FaqDesk
from bot.core.faq.gaps import picks
from bot.core.messages import Address, Message, Posted
from bot.core.summary import AdminSummary, admin_summary
from bot.core.surveys.runs import SurveyClosed, SurveyDesk
from bot.metrics import DUPLICATES, EVENTS, SLACK_ERRORS
from bot.store.events import EventLedger
from bot.store.models import utcnow

log = logging.getLogger(__name__)
# Message subtypes that are something a person said; every other subtype (edits, deletions,
# joins, topic changes, bot messages, huddles, …) is not a question or a reply.
SPOKEN_SUBTYPES = frozenset({None, "thread_broadcast", "file_share", "me_message"})


def build_app(
    *,
    client: WebClient,
    signing_secret: str,
    desk: FaqDesk,
    db: Engine,
    support_channel: str,
    admins: Admins | frozenset[str] = frozenset(),
    announcer: Announcer | None = None,
    surveys: SurveyDesk | None = None,
    console: Callable[[str], m.Message] | None = None,
    early: EarlyAcks | None = None,
) -> App:
    """A Bolt app answering DMs, mentions and /ask, with feedback, escalation and App Home.
    `early`: the HTTP server's requests acked before Bolt sees them (survey answer clicks are
    registered with it)."""
    app = App(
        client=client,
        signing_secret=signing_secret,
        token_verification_enabled=False,
        # Each request's thread waits for its listener to ack() from this pool: sized so a
        # burst is acked while other listeners wait on Slack (Bolt's default is 5 threads).
        listener_executor=ThreadPoolExecutor(LISTENER_THREADS, thread_name_prefix="listener"),
    )
    ledger = EventLedger(db)
    chat = SlackChat(client)
    if announcer is not None:  # answers, tickets and notices share the outbox's rate budget
        chat.charge_to(announcer.outbox.budget, announcer.outbox.limits)
    confirmations = Confirmations(chat)
    conversation = Conversation(
        desk=desk,
        support_channel=support_channel,
        admins=admins,
        announcer=announcer,
        surveys=surveys,
        console=console,
    )

    @app.middleware
    def drop_retried_events(body: dict[str, Any], next: Any) -> BoltResponse | None:
        """A retried event (same event_id) is acked and dropped once it has been handled, also
        after a restart; one claimed but never handled (a crash) is handled again."""
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        if event_id and not ledger.claim(str(event_id)):
            DUPLICATES.inc()
            return BoltResponse(status=200, body="")
        next()
        return None

    def handled(body: dict[str, Any]) -> None:
        if body.get("event_id"):
            ledger.done(str(body["event_id"]))

    # Messages and mentions are answered on a few threads of their own, each once the requests
    # in flight are acked: dozens of answers at once on 2 cores only take the GIL from the
    # acks (200 DMs in a second were acked at p99 ~0.35 s with one answer per listener
    # thread; benchmarks/dm_burst.py) and finish no sooner (Slack takes ~1 a second per DM).
    # Each conversation's on the same thread: one person's messages are answered in order.
    said_threads = [
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"said-{n}")
        for n in range(SAID_THREADS)
    ]

    def said_later(handle: Callable[[dict[str, Any], dict[str, Any]], None], *args: Any) -> None:
        event = args[0]
        where = str(event.get("channel") or event.get("user") or "")
        thread = said_threads[zlib.crc32(where.encode()) % len(said_threads)]
        thread.submit(answer_said, handle, *args)

    def answer_said(
        handle: Callable[[dict[str, Any], dict[str, Any]], None],
        event: dict[str, Any],
        context: dict[str, Any],
        body: dict[str, Any],
    ) -> None:
        ACKS_FIRST.wait()
        try:
            handle(event, context)
        except Exception:  # the pool would drop it silently
            log.exception("answering a %s event failed", event.get("type", "?"))
            return  # not marked handled: a retry of it is handled again
        handled(body)

    @app.event("message")
    def on_message(event: dict[str, Any], context: dict[str, Any], body: dict[str, Any]) -> None:
        said_later(message_event, event, context, body)

    def message_event(event: dict[str, Any], context: dict[str, Any]) -> None:
        if (
            event.get("subtype") not in SPOKEN_SUBTYPES
            or event.get("bot_id")
            or not event.get("user")
        ):
            return
        conversation.said(_said(event, context, direct=event.get("channel_type") == "im"), chat)

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], context: dict[str, Any], body: dict[str, Any]) -> None:
        said_later(mention_event, event, context, body)

    def mention_event(event: dict[str, Any], context: dict[str, Any]) -> None:
        if event.get("bot_id") or not event.get("user"):
            return
        if conversation.is_support(str(event.get("channel", ""))) and event.get("thread_ts"):
            return  # a reply in a ticket thread: the message listener relays it
        conversation.said(_said(event, context, mentioned=True), chat)

    # /ask is answered in the ack when the answer is ready within ASK_BUDGET seconds; else
    # acked empty at once and answered through the command's response_url.
    answers = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="ask")

    def answer_later(done: Future[Message], response_url: str, user: str) -> None:
        try:
            message = done.result()
        except Exception:
            log.exception("answering /ask failed")
            message = m.say("Sorry, I could not answer that just now. Please try again.")
        body = {"response_type": "ephemeral", **to_payload(message)}
        if not (response_url and respond(response_url, body)):
            chat.post(Address(user), message)  # the asker's DM with the app

    @app.command("/ask")
    def on_ask(ack: Ack, command: dict[str, Any]) -> None:
        EVENTS.labels(kind="command").inc()
        user = str(command.get("user_id", ""))
        # Replies to a later click go to the asker's DM with the app, never to the channel.
        text = question(str(command.get("text") or ""))
        pending = answers.submit(conversation.ask, text, Asker(user, user))
        try:
            message = pending.result(timeout=ASK_BUDGET)
        except FutureTimeout:
            ack()  # well within Slack's 3 s; the answer follows
            url = str(command.get("response_url") or "")
            pending.add_done_callback(lambda done: answer_later(done, url, user))
            return
        ack(response_type="ephemeral", **to_payload(message))

    @app.action(re.compile(r"^faq\."))
    def on_faq_action(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        ack()
        EVENTS.labels(kind="faq_action").inc()
        interaction = _interaction(body, action)
        reply = conversation.clicked(interaction, chat)
        if interaction.action_id == m.FAQ_APPROVE and interaction.user_id in admins:
            publish_home(interaction.user_id)
        if reply is None:
            return
        container = body.get("container") or {}
        if container.get("is_ephemeral") and body.get("response_url"):
            respond(response_type="ephemeral", replace_original=False, **to_payload(reply.message))
        elif container.get("is_ephemeral") or not interaction.channel_id:
            chat.post(Address(interaction.user_id), reply.message)
        else:
            where = Address(interaction.channel_id, interaction.thread_ts or None)
            chat.post(where, reply.message)

    @app.action(re.compile(r"^support\."))
    def on_support_action(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        EVENTS.labels(kind="support_action").inc()
        interaction = _interaction(body, action)
        reply = conversation.clicked(interaction, chat)
        if reply is not None:  # Save as FAQ: a notice for the supporter only
            only_for = Address(interaction.channel_id, only_for=interaction.user_id)
            chat.post(only_for, reply.message)

    # Survey clicks come in bursts (everyone is invited at 10:00). Each is acked at once and
    # stored behind by CLICK_STORERS threads, each person's clicks always by the same one, in
    # the order they came: a burst never holds up the acks Slack needs within 3 s, and one
    # person's answers are stored in the order they clicked. Storing an answer is mostly
    # waiting on the database (a few statements and commits: ~10 ms each on PostgreSQL, where
    # one thread stored 1,000 clicks 10.5 s after the last; benchmarks/survey_clicks.py), so a
    # few threads store them side by side. They only store: showing the answer in Slack is the
    # confirmations' job, so storing never waits behind Slack.
    storers = [
        ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"survey-clicks-{n}")
        for n in range(CLICK_STORERS)
    ]

    def store_click(user_id: str, *args: Any) -> None:
        """Queue a click on its person's storing thread (the same one for all their clicks)."""
        ACKS_FIRST.queue_store()
        storers[zlib.crc32(user_id.encode()) % len(storers)].submit(record_answer, *args)

    def record_answer(
        interaction: m.Interaction, response_url: str, run_id: int, question_id: str, value: Any
    ) -> None:
        ACKS_FIRST.wait(quiet=STORE_QUIET)  # a burst's acks first; its answers right after
        try:
            reply = conversation.answer(
                user_id=interaction.user_id, run_id=run_id, question_id=question_id, value=value
            )
        except Exception:  # the executor would drop it silently
            log.exception("storing a survey answer failed")
            return
        finally:
            ACKS_FIRST.stored()
        if reply is None:
            return
        if reply.private:  # the run has closed: a polite notice for this person only
            only_for = Address(interaction.channel_id, only_for=interaction.user_id)
            confirmations.tell(only_for, reply.message, response_url)
            return
        posted = Posted(interaction.channel_id, interaction.message_ts)
        confirmations.show(posted, reply.message, response_url)

    def take_survey_answer(body: dict[str, Any], action: dict[str, Any]) -> None:
        """Queue one answer click for storing (in the request's thread, so in arrival order)."""
        EVENTS.labels(kind="survey_answer").inc()
        if surveys is None:
            return
        interaction = _interaction(body, action)
        parsed = _survey_value(body, action)
        if parsed is None:
            return
        url = str(body.get("response_url") or "")
        store_click(interaction.user_id, interaction, url, *parsed)

    @app.action(re.compile(r"^survey\.answer"))
    def on_survey_answer(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        take_survey_answer(body, action)

    if early is not None:  # over HTTP: acked and queued before Bolt would see the click
        early.action("survey.answer", take_survey_answer)

    @app.action(re.compile(r"^survey\.comment"))
    def on_survey_comment(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        if surveys is None:
            return
        interaction = _interaction(body, action)
        run_text, _, question_id = interaction.value.partition("|")
        question = surveys.question(int(run_text or 0), question_id)
        if question is None:
            return
        current = surveys.answers(int(run_text), interaction.user_id).get(question_id) or ""
        meta = {
            "run": int(run_text),
            "q": question_id,
            "channel": interaction.channel_id,
            "ts": interaction.message_ts,
            "url": str(body.get("response_url") or ""),  # to show the comment when saved
        }
        view = comment_modal(question.text, str(current), json.dumps(meta))
        call(client, "views.open", trigger_id=str(body.get("trigger_id", "")), view=view)

    @app.view("survey.comment_modal")
    def on_comment_submit(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        if surveys is None:
            ack()
            return
        meta = json.loads(view.get("private_metadata") or "{}")
        state = ((view.get("state") or {}).get("values") or {}).get("comment") or {}
        text = str((state.get("text") or {}).get("value") or "")
        user = str((body.get("user") or {}).get("id", ""))
        try:
            copy = surveys.answer(
                run_id=int(meta.get("run", 0)),
                user_id=user,
                question_id=str(meta.get("q", "")),
                value=text,
            )
        except SurveyClosed as exc:
            ack(response_action="errors", errors={"comment": str(exc)[:150]})
            return
        ack()
        if meta.get("channel") and meta.get("ts"):
            posted = Posted(str(meta["channel"]), str(meta["ts"]))
            confirmations.show(posted, copy, str(meta.get("url") or ""))

    @app.action(re.compile(r"^survey\.pause"))
    def on_survey_pause(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        if surveys is None:
            return
        interaction = _interaction(body, action)
        reply = conversation.clicked(interaction, chat)
        if reply is not None:
            chat.post(Address(interaction.channel_id), reply.message)

    @app.action(re.compile(r"^console\.open"))
    def on_console(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        conversation.clicked(_interaction(body, action), chat)

    @app.action(re.compile(r"^announce\.link"))
    def on_link(ack: Ack) -> None:
        ack()  # link buttons open in the browser; Slack still tells us about the click

    @app.action(re.compile(r"^announce\.ack"))
    def on_acknowledge(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        EVENTS.labels(kind="acknowledge").inc()
        if announcer is None:
            return
        interaction = _interaction(body, action)
        reply = conversation.clicked(interaction, chat)
        if reply is not None and interaction.message_ts:
            posted = Posted(interaction.channel_id, interaction.message_ts)
            confirmations.show(posted, reply.message, str(body.get("response_url") or ""))

    def publish_home(user: str) -> None:
        admin = user in admins
        summary = None
        if admin:
            rollout = announcer.content.rollout if announcer else desk.engine.state.rollout
            summary = admin_summary(
                db=db,
                now=utcnow(),
                rollout=rollout,
                plan=announcer.content.plan if announcer else None,
                survey_ids=frozenset(surveys.surveys()) if surveys else frozenset(),
            )
        home = home_message(desk, admin=admin, summary=summary, console=console is not None)
        view = {"type": "home", "blocks": [block.to_dict() for block in to_blocks(home)]}
        call(client, "views.publish", user_id=user, view=view)

    @app.event("app_home_opened")
    def on_home(event: dict[str, Any], body: dict[str, Any]) -> None:
        if event.get("tab", "home") == "home":
            EVENTS.labels(kind="home").inc()
            publish_home(str(event.get("user", "")))
        handled(body)

    @app.error
    def on_error(error: Exception, body: dict[str, Any]) -> None:
        log.exception("unhandled error for a %s request", body.get("type", "?"), exc_info=error)

    return app


# Threads of Bolt's listener pool (each request waits for its listener to ack from it).
LISTENER_THREADS = 32
# Threads answering messages and mentions.
SAID_THREADS = 4
# Threads storing survey answer clicks (each person's on one of them). Each answer waits until
# no request came for STORE_QUIET seconds (at most ACKS_FIRST.limit): stored during a burst,
# the answers took the GIL from the acks (1,000 clicks in 1 s acked at p99 ~1 s on 8 threads),
# stored after it, all were in 2–3 s (benchmarks/survey_clicks.py).
CLICK_STORERS = 8
STORE_QUIET = 0.02
# /ask: how long the command waits for its answer before acking empty and answering through
# the response_url; threads computing the answers.
ASK_BUDGET = 1.5
ANSWER_THREADS = 4


def comment_modal(label: str, current: str, private_metadata: str) -> dict[str, Any]:
    """The modal for a free-text survey answer."""
    element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": "text",
        "multiline": True,
        "max_length": 3000,
    }
    if current:
        element["initial_value"] = current[:3000]
    return {
        "type": "modal",
        "callback_id": "survey.comment_modal",
        "title": {"type": "plain_text", "text": "Your comment"},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": private_metadata,
        "blocks": [
            {
                "type": "input",
                "block_id": "comment",
                "optional": True,
                "label": {"type": "plain_text", "text": label[:2000]},
                "element": element,
            }
        ],
    }


def _survey_value(body: dict[str, Any], action: dict[str, Any]) -> tuple[int, str, Any] | None:
    """(run id, question id, value) from a button, a select or checkboxes."""
    if action.get("type") == "checkboxes":
        chosen = [str(o.get("value", "")) for o in action.get("selected_options") or []]
        template = chosen[0] if chosen else _first_option(body, str(action.get("action_id", "")))
        if not template:
            return None
        run_text, question_id, _ = template.split("|", 2)
        return int(run_text), question_id, [value.split("|", 2)[2] for value in chosen]
    raw = str(action.get("value") or (action.get("selected_option") or {}).get("value") or "")
    parts = raw.split("|", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2]


def _first_option(body: dict[str, Any], action_id: str) -> str:
    """An option value of the element `action_id` in the clicked message (to know which run and
    question an emptied set of checkboxes belongs to)."""
    for block in (body.get("message") or {}).get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("action_id") == action_id and element.get("options"):
                return str(element["options"][0].get("value", ""))
    return ""


class Admins:
    """Who may run admin actions: MOBILIZE_ADMINS, plus members of MOBILIZE_ADMIN_GROUP
    (looked up at most every `ttl` seconds)."""

    def __init__(
        self, client: WebClient, *, users: frozenset[str], group: str = "", ttl: float = 300
    ) -> None:
        self.client = client
        self.users = users
        self.group = group
        self.ttl = ttl
        self._members: frozenset[str] = frozenset()
        self._fetched = 0.0
        self._lock = threading.Lock()

    def __contains__(self, user_id: object) -> bool:
        return user_id in self.users or user_id in self._group_members()

    def _group_members(self) -> frozenset[str]:
        if not self.group:
            return frozenset()
        with self._lock:
            if time.monotonic() - self._fetched > self.ttl:
                try:
                    response = self.client.usergroups_users_list(usergroup=self.group)
                    self._members = frozenset(str(u) for u in response.get("users") or [])
                except (SlackApiError, SlackClientError, OSError) as exc:
                    code = slack_error_code(exc)
                    SLACK_ERRORS.labels(method="usergroups.users.list", error=code).inc()
                    log.error("reading MOBILIZE_ADMIN_GROUP %s failed: %s", self.group, code)
                self._fetched = time.monotonic()
            return self._members


def home_message(
    desk: FaqDesk,
    *,
    admin: bool = False,
    summary: AdminSummary | None = None,
    console: bool = False,
) -> Message:
    """The App Home: what the bot does and the most asked questions; for admins, the week at a
    glance (next sends, open surveys, unanswered questions), a button that DMs a one-time
    console link, and phrasings people picked from "did you mean", each with a button to
    approve it as an alternate."""
    state = desk.engine.state
    lines = [
        f"*Hi! I help with the {state.rollout.name} rollout.*",
        "• Ask me anything in this DM, mention me in a channel, or type `/ask` anywhere.\n"
        "• If I'm not sure, I'll suggest answers; if I don't know, a person from support "
        "takes over.\n"
        "• Announcements and pulse surveys about the rollout come here too.",
    ]
    asked = desk.most_asked(5)
    if asked:
        lines.append("*Most asked*\n" + "\n".join(f"• {entry.question}" for entry, _count in asked))
    else:
        sample = list(state.kb.entries.values())[:5]
        if sample:
            lines.append("*Try asking*\n" + "\n".join(f"• {entry.question}" for entry in sample))
    approve: tuple[m.Button, ...] = ()
    parts: list[m.Text] = []
    if admin and summary is not None:
        lines.append("*For admins: this week*")
        lines.extend(summary.lines())
    if admin and console:
        approve += (m.Button("Open the console", m.CONSOLE_OPEN, "home"),)
    if admin:
        found = picks(desk.db)[:5]
        if found:
            lines.append("*Phrasings to approve* (people picked these from “did you mean”)")
            listing = "\n".join(f"• “{p.question[:150]}” → {p.entry_id} ×{p.count}" for p in found)
            parts.append(m.user_text(listing))
            approve += tuple(
                m.Button(f"Approve “{p.question[:40]}”", m.FAQ_APPROVE, str(p.feedback_id))
                for p in found
            )
    return m.say(*lines, *parts, buttons=approve)


def _said(
    event: dict[str, Any], context: dict[str, Any], *, direct: bool = False, mentioned: bool = False
) -> Said:
    """A message or mention event as the core's `Said`: text decoded once, the bot's own
    mention left out."""
    bot_user = str(context.get("bot_user_id") or "")
    spans = tuple(
        span
        for span in parse(str(event.get("text") or ""))
        if not (isinstance(span, m.Mention) and span.id == bot_user)
    )
    return Said(
        user_id=str(event["user"]),
        channel=str(event.get("channel", "")),
        text=spans,
        direct=direct,
        mentioned=mentioned,
        thread=str(event.get("thread_ts") or ""),
        ts=str(event.get("ts") or ""),
        platform="slack",
    )


def _interaction(body: dict[str, Any], action: dict[str, Any]) -> m.Interaction:
    message = body.get("message") or {}
    channel = (
        (body.get("channel") or {}).get("id")
        or (body.get("container") or {}).get("channel_id")
        or ""
    )
    return m.Interaction(
        action_id=action_id_of(str(action.get("action_id", ""))),
        value=str(action.get("value") or ""),
        user_id=str((body.get("user") or {}).get("id", "")),
        channel_id=str(channel),
        message_ts=str(message.get("ts") or ""),
        thread_ts=str(message.get("thread_ts") or ""),
    )
