"""Teams activities at `POST /api/messages`: authenticate, translate, hand to the core.

    endpoint = TeamsEndpoint(conversation=conversation, chat=chat, refs=refs, auth=auth)
    status, body = endpoint.handle(headers, raw_body)     # or mount `endpoint` as a WSGI app

- `message` in a 1:1 chat or a channel/group chat: acknowledged at once (200), then translated
  into a `Said` on a worker thread: the core answers questions (1:1 and @mentions, in the
  mention's thread) and relays a supporter's reply in a ticket thread of the support channel to
  the asker. A channel reply reaches the bot only when it @mentions the bot, or for every
  message when the app holds the resource-specific permission `ChannelMessage.Read.Group`; the
  package asks for it so supporters can simply reply in the ticket's thread, and the bot acts
  on nothing else it reads there (see README, "Connect Microsoft Teams").
- `invoke` `adaptiveCard/action` (an `Action.Execute` click): answered in the response.
  `Reply.replace` returns the new card, which Teams shows in place of the clicked one (and in a
  1:1 chat the activity is updated too, so it stays after a reload); a ticket the core updated
  for everyone is returned the same way; `Reply.private` goes to the person's 1:1 chat; other
  replies are posted where the click happened.
- `message` with `value` (an `Action.Submit` click, from older cards): handled like a click.
- `installationUpdate` / `conversationUpdate`: the conversation reference is kept (people's
  1:1 chats and service URLs, for writing to them first later), a new install is greeted once
  (on `installationUpdate` add: Teams sends both events for one install).

Nobody sees a traceback: a failure is logged with its code and the person gets a short apology.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy import Engine

from bot.channels.teams.auth import ActivityAuthenticator, Authenticator, BotTokens, Unauthorized
from bot.channels.teams.cards import COMMENT_CHARS, comment_dialog
from bot.channels.teams.chat import TeamsChat
from bot.channels.teams.refs import References, base_conversation, thread_of
from bot.channels.teams.text import MentionEntity, parse
from bot.config import Settings
from bot.core.announcements.announcer import Announcer
from bot.core.conversation import Conversation, Reply, Said
from bot.core.faq.desk import FaqDesk
from bot.core.faq.engine import FaqEngine
from bot.core.messages import Address, Interaction, Message, Posted, say
from bot.core.surveys.runs import SURVEY_ANSWER, SURVEY_COMMENT, SurveyDesk
from bot.store.events import EventLedger

with warnings.catch_warnings():  # the SDK warns about its preview features on import
    warnings.simplefilter("ignore")
    from microsoft_teams.api import ActivityTypeAdapter

log = logging.getLogger(__name__)

TEAMS_ACTIVITIES = Counter(
    "mobilize_teams_activities_total", "Teams activities received, by kind", ["kind"]
)
MAX_BODY = 1_000_000
CARD_RESPONSE = "application/vnd.microsoft.card.adaptive"
MESSAGE_RESPONSE = "application/vnd.microsoft.activity.message"
SORRY = "Sorry, something went wrong on my side. Please try again in a minute."
StartResponse = Callable[..., Any]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 413: "Payload Too Large"}


def _message_response(text: str) -> dict[str, Any]:
    return {"statusCode": 200, "type": MESSAGE_RESPONSE, "value": text}


def _task_message(text: str) -> dict[str, Any]:
    """A dialog's answer that closes it (or never opens it) with a short message."""
    return {"task": {"type": "message", "value": text}}


class TeamsEndpoint:
    """The bot's Teams messaging endpoint (a WSGI app, or `handle` for any server)."""

    def __init__(
        self,
        *,
        conversation: Conversation,
        chat: TeamsChat,
        refs: References,
        auth: Authenticator,
        workers: int = 8,
        rollout_name: Callable[[], str] | None = None,
        ledger: EventLedger | None = None,
    ) -> None:
        self.conversation = conversation
        self.ledger = ledger  # drops a redelivered message activity
        self.chat = chat
        self.refs = refs
        self.auth = auth
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="teams")
        self.rollout_name = rollout_name or (lambda: conversation.desk.engine.state.rollout.name)

    # ---------------------------------------------------------------- HTTP

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        payload: dict[str, Any] | None
        if length > MAX_BODY:
            status, payload = 413, {"error": "too large"}
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {
                key[5:].replace("_", "-").lower(): str(value)
                for key, value in environ.items()
                if key.startswith("HTTP_")
            }
            status, payload = self.handle(headers, body)
        data = json.dumps(payload).encode("utf-8") if payload is not None else b""
        start_response(
            f"{status} {_REASONS.get(status, 'Error')}",
            [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(data))),
            ],
        )
        return [data]

    def handle(self, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any] | None]:
        """Status and JSON body for one activity; work after the ack runs on the pool."""
        try:
            activity = json.loads(body or b"null")
        except ValueError:
            activity = None
        if not isinstance(activity, dict):
            TEAMS_ACTIVITIES.labels(kind="malformed").inc()
            return 400, {"error": "expected a JSON activity"}
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        try:
            self.auth.check(authorization, activity)
        except Unauthorized as exc:
            TEAMS_ACTIVITIES.labels(kind="unauthorized").inc()
            log.warning(
                "teams: refused a %s activity: %s", _field(activity.get("type")), exc.reason
            )
            return 401, {"error": "Unauthorized"}
        try:
            ActivityTypeAdapter.validate_python(activity)
        except ValidationError as exc:
            TEAMS_ACTIVITIES.labels(kind="invalid").inc()
            log.warning("teams: an activity the SDK cannot read: %s", _field(str(exc)))
            return 400, {"error": "malformed activity"}
        kind = str(activity.get("type") or "")
        TEAMS_ACTIVITIES.labels(kind=kind if kind in _KINDS else "other").inc()
        if kind == "invoke":
            return self._invoke(activity)
        key = _event_key(activity)
        if key and self.ledger is not None and not self.ledger.claim(key):
            TEAMS_ACTIVITIES.labels(kind="redelivered").inc()
            return 200, None  # handled already (or being handled): a redelivery
        self.pool.submit(self._safely, activity, key)
        return 200, None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)

    # ---------------------------------------------------------------- after the ack

    def _safely(self, activity: dict[str, Any], key: str = "") -> None:
        try:
            self._activity(activity)
            if key and self.ledger is not None:
                self.ledger.done(key)
        except Exception:
            log.exception(
                "teams: handling a %s activity failed (teams.handler_failed)",
                _field(activity.get("type")),
            )
            if activity.get("type") == "message":
                self.chat.post(self._where(activity), say(SORRY))

    def _activity(self, activity: dict[str, Any]) -> None:
        self.refs.observe(activity)
        kind = activity.get("type")
        if kind == "message":
            value = activity.get("value")
            if isinstance(value, dict) and not (activity.get("text") or "").strip():
                self._submitted(activity, value)
                return
            said = self._said(activity)
            if said is not None:
                self.conversation.said(said, self.chat)
        elif kind == "installationUpdate":
            action = str(activity.get("action") or "")
            personal = _conversation_type(activity) == "personal"
            sender = activity.get("from") or {}
            user = str(sender.get("aadObjectId") or sender.get("id") or "")
            if action.startswith("add") and action != "add-upgrade":
                if personal and user:
                    self.refs.set_installed(user, True)
                self.chat.post(Address(_conversation_id(activity)), self._welcome(activity))
            elif action.startswith("remove") and personal and user:
                self.refs.set_installed(user, False)

    def _said(self, activity: dict[str, Any]) -> Said | None:
        sender = activity.get("from") or {}
        if not str(sender.get("id") or "").startswith("29:"):
            return None  # bots (ours included) and the system
        bot_id = str((activity.get("recipient") or {}).get("id") or "")
        mentions = [
            MentionEntity(
                str(entity.get("text") or ""),
                str((entity.get("mentioned") or {}).get("id") or ""),
                str((entity.get("mentioned") or {}).get("name") or ""),
            )
            for entity in activity.get("entities") or []
            if isinstance(entity, dict) and entity.get("type") == "mention"
        ]
        text = str(activity.get("text") or "")
        for attachment in activity.get("attachments") or []:
            if isinstance(attachment, dict) and attachment.get("contentType") == "text/html":
                text = str(attachment.get("content") or text)  # richer: links keep their labels
                break
        spans = parse(text, mentions, bot_id=bot_id)
        kind = _conversation_type(activity)
        conversation_id = _conversation_id(activity)
        ts = str(activity.get("id") or "")
        root = thread_of(conversation_id)
        channel = kind == "channel"
        return Said(
            user_id=str(sender.get("aadObjectId") or sender.get("id")),
            channel=base_conversation(conversation_id) if channel else conversation_id,
            text=spans,
            direct=kind == "personal",
            mentioned=any(m.id == bot_id for m in mentions),
            thread=root if channel and root and root != ts else "",
            ts=ts,
            platform="teams",
        )

    def _welcome(self, activity: dict[str, Any]) -> Message:
        name = str((activity.get("from") or {}).get("name") or "").split(" ")[0]
        hello = f"Hi {name}!" if name and _conversation_type(activity) == "personal" else "Hi!"
        return say(
            f"{hello} I'm **Mobilize**, here to help with the {self.rollout_name()} rollout.",
            "Ask me anything about it, for example *How do I sign in for the first time?* "
            "In a channel, @mention me and I answer in the thread. If I can't help, I pass your "
            "question to a person.",
            summary="Mobilize is here to help with your questions",
        )

    # ---------------------------------------------------------------- clicks

    def _invoke(self, activity: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        name = activity.get("name")
        if name in ("task/fetch", "task/submit"):
            return self._dialog(activity)
        if name != "adaptiveCard/action":
            return 200, {"statusCode": 200, "type": MESSAGE_RESPONSE, "value": ""}
        try:
            self.refs.observe(activity)
            value = activity.get("value") or {}
            action = value.get("action") or {}
            verb = str(action.get("verb") or "")
            raw = action.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            interaction = self._interaction(activity, verb, data)
            updated: Mapping[str, Any] = {}
            if verb == SURVEY_ANSWER:
                reply = self._survey_answer(interaction, data)
            else:
                with self.chat.capture() as updated:
                    reply = self.conversation.clicked(interaction, self.chat)
            return 200, self._answer(activity, interaction, reply, updated)
        except Exception:
            log.exception("teams: a card action failed (teams.action_failed)")
            return 200, _message_response(SORRY)

    def _survey_answer(self, interaction: Interaction, data: dict[str, Any]) -> Reply | None:
        """Store a survey answer from a button (`run|question|value`), a drop-down or a set of
        checkboxes (each option's value is `run|question|option`)."""
        picked: list[str] | None = None
        if "values" in interaction.extra:
            picked = [str(v) for v in json.loads(interaction.extra["values"])]
        template = (
            interaction.value
            if picked is None
            else next(iter(picked or [str(o) for o in data.get("options") or []]), "")
        )
        parts = template.split("|", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        value: object = parts[2]
        if picked is not None and data.get("multi"):
            value = [option.split("|", 2)[-1] for option in picked]
        return self.conversation.answer(
            user_id=interaction.user_id, run_id=int(parts[0]), question_id=parts[1], value=value
        )

    def _dialog(self, activity: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """A survey's free-text answer: `task/fetch` opens the dialog, `task/submit` saves it
        and updates the survey card it came from."""
        try:
            self.refs.observe(activity)
            raw = (activity.get("value") or {}).get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            user = str((activity.get("from") or {}).get("aadObjectId") or "")
            run_text, _, question_id = str(data.get("value") or "").partition("|")
            surveys = self.conversation.surveys
            if surveys is None or not run_text.isdigit() or not user:
                return 200, _task_message("There is nothing to answer here.")
            run_id = int(run_text)
            if activity.get("name") == "task/fetch":
                question = surveys.question(run_id, question_id)
                if question is None:
                    return 200, _task_message("This survey has closed. Thank you all the same.")
                current = surveys.answers(run_id, user).get(question_id) or ""
                back = {
                    "verb": SURVEY_COMMENT,
                    "value": data.get("value"),
                    "card": str(activity.get("replyToId") or ""),
                }
                return 200, comment_dialog(question.text, str(current), back)
            reply = self.conversation.answer(
                user_id=user,
                run_id=run_id,
                question_id=question_id,
                value=str(data.get("comment") or "")[:COMMENT_CHARS],
            )
            if reply is None:
                return 200, _task_message("That is not an answer to this survey.")
            if reply.private:  # closed meanwhile: say so, politely
                return 200, _task_message(reply.message.plain)
            card = str(data.get("card") or "")
            if card:
                posted = Posted(_conversation_id(activity), card)
                self.pool.submit(self.chat.update, posted, reply.message)
            return 200, _task_message("Saved. Thank you!")
        except Exception:
            log.exception("teams: a dialog failed (teams.dialog_failed)")
            return 200, _task_message(SORRY)

    def _answer(
        self,
        activity: dict[str, Any],
        interaction: Interaction,
        reply: Reply | None,
        updated: Mapping[str, Any],
    ) -> dict[str, Any]:
        clicked = str(activity.get("replyToId") or "")
        personal = _conversation_type(activity) == "personal"
        if reply is None:
            card = updated.get(clicked)
            if card is not None:  # the core updated the clicked card for everyone
                return {"statusCode": 200, "type": CARD_RESPONSE, "value": card.card}
            return _message_response("")
        if reply.replace:
            rendered = self.chat.render(reply.message)
            if personal and clicked:  # keep it after a reload, too
                posted = Posted(_conversation_id(activity), clicked)
                self.pool.submit(self.chat.update, posted, reply.message)
            return {"statusCode": 200, "type": CARD_RESPONSE, "value": rendered.card}
        if reply.private and not personal:
            self.chat.post(Address(interaction.user_id), reply.message)
            return _message_response("I've sent you the details in our 1:1 chat.")
        self.chat.post(self._where(activity), reply.message)
        return _message_response("")

    def _submitted(self, activity: dict[str, Any], data: dict[str, Any]) -> None:
        verb = str(data.get("verb") or data.get("action") or "")
        if not verb:
            return
        interaction = self._interaction(activity, verb, data)
        if verb == SURVEY_ANSWER:
            reply = self._survey_answer(interaction, data)
        else:
            reply = self.conversation.clicked(interaction, self.chat)
        if reply is None:
            return
        clicked = str(activity.get("replyToId") or "")
        if reply.replace and clicked:
            self.chat.update(Posted(_conversation_id(activity), clicked), reply.message)
        elif reply.private and _conversation_type(activity) != "personal":
            self.chat.post(Address(interaction.user_id), reply.message)
        else:
            self.chat.post(self._where(activity), reply.message)

    def _interaction(
        self, activity: dict[str, Any], verb: str, data: dict[str, Any]
    ) -> Interaction:
        sender = activity.get("from") or {}
        conversation_id = _conversation_id(activity)
        value = str(data.get("value") or "")
        extra: dict[str, str] = {}
        input_id = data.get("input")
        if isinstance(input_id, str) and input_id:
            options = [str(o) for o in data.get("options") or []]
            picked = [
                options[int(i)]
                for i in str(data.get(input_id) or "").split(",")
                if i.strip().isdigit() and int(i) < len(options)
            ]
            value = "\n".join(picked)
            extra["values"] = json.dumps(picked)
        return Interaction(
            action_id=verb,
            value=value,
            user_id=str(sender.get("aadObjectId") or sender.get("id") or ""),
            channel_id=base_conversation(conversation_id),
            message_ts=str(activity.get("replyToId") or ""),
            thread_ts=thread_of(conversation_id),
            extra=extra,
        )

    def _where(self, activity: dict[str, Any]) -> Address:
        """Where an answer to this activity goes: its chat, or its channel thread."""
        conversation_id = _conversation_id(activity)
        if _conversation_type(activity) == "channel":
            root = thread_of(conversation_id) or str(activity.get("id") or "")
            return Address(base_conversation(conversation_id), root)
        return Address(conversation_id)


_KINDS = frozenset({"message", "invoke", "conversationUpdate", "installationUpdate"})


def _event_key(activity: Mapping[str, Any]) -> str:
    """The ledger's key for a message activity: its id is unique within its conversation."""
    activity_id = str(activity.get("id") or "")
    if activity.get("type") != "message" or not activity_id:
        return ""
    digest = hashlib.sha256(f"{_conversation_id(activity)}|{activity_id}".encode()).hexdigest()
    return f"teams:{digest[:56]}"


def _conversation_id(activity: Mapping[str, Any]) -> str:
    return str((activity.get("conversation") or {}).get("id") or "")


def _conversation_type(activity: Mapping[str, Any]) -> str:
    return str((activity.get("conversation") or {}).get("conversationType") or "personal")


def _field(value: object) -> str:
    """A value from an activity, safe for one log line."""
    return "".join(c for c in str(value) if c.isprintable())[:120]


def teams_tokens(settings: Settings) -> BotTokens:
    """The bot's outgoing tokens (Bot Framework and Graph scopes) from settings."""
    settings.require_teams()
    return BotTokens(
        app_id=settings.teams_app_id,
        app_password=settings.teams_app_password,
        token_url=settings.teams_token_endpoint,
    )


def teams_chat(settings: Settings, refs: References) -> TeamsChat:
    """The `Chat` port on the Bot Connector, from settings."""
    return TeamsChat(tokens=teams_tokens(settings), refs=refs, tenant_id=settings.teams_tenant_id)


def build_endpoint(
    *,
    settings: Settings,
    db: Engine,
    engine: FaqEngine,
    refs: References | None = None,
    chat: TeamsChat | None = None,
    announcer: Announcer | None = None,
    surveys: SurveyDesk | None = None,
    console: Callable[[str], Message] | None = None,
) -> TeamsEndpoint:
    """The Teams endpoint from settings: its own support desk (tickets go to
    MOBILIZE_TEAMS_SUPPORT_CHANNEL) on the shared knowledge base and database; with the
    announcer and the survey desk, acknowledgements and survey answers too."""
    settings.require_teams()
    refs = refs or References(db)
    chat = chat or teams_chat(settings, refs)
    desk = FaqDesk(engine=engine, db=db, support_channel=settings.teams_support_channel)
    conversation = Conversation(
        desk=desk,
        support_channel=settings.teams_support_channel,
        admins=settings.admin_ids,
        announcer=announcer,
        surveys=surveys,
        console=console,
    )
    auth = ActivityAuthenticator(
        app_id=settings.teams_app_id, openid_metadata_url=settings.teams_openid_metadata_url
    )
    return TeamsEndpoint(
        conversation=conversation, chat=chat, refs=refs, auth=auth, ledger=EventLedger(db)
    )
