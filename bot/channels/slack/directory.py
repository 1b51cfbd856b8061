"""The core's `Directory` port on Slack's Web API: who is in the workspace, a channel, a group.

Needs the bot scopes `users:read`, `users:read.email` (emails and `users.lookupByEmail`),
`channels:read` / `groups:read` (members of public / private channels) and `usergroups:read`.
Pass a client that already retries 429s (`chat.make_client`); a Slack error that remains is
raised as `DirectoryError` with Slack's code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse

from bot.channels.slack.chat import slack_error_code
from bot.core.announcements.audience import DirectoryError, Person

SLACKBOT = "USLACKBOT"
# conversations.members: Slack's largest page.
MEMBERS_PAGE = 1000


def to_person(user: Mapping[str, Any]) -> Person:
    """A `Person` from a Slack user object (users.list, users.info, users.lookupByEmail)."""
    profile: Mapping[str, Any] = user.get("profile") or {}
    real_name = str(profile.get("real_name") or user.get("real_name") or "").strip()
    name = str(profile.get("display_name") or "").strip() or real_name or str(user.get("name", ""))
    first_name = str(profile.get("first_name") or "").strip()
    if not first_name:
        first_name = real_name.split()[0] if real_name.split() else name
    user_id = str(user["id"])
    return Person(
        id=user_id,
        name=name,
        first_name=first_name,
        tz=str(user["tz"]) if user.get("tz") else None,
        email=str(profile["email"]) if profile.get("email") else None,
        # Slack lists Slackbot with is_bot false.
        is_bot=bool(user.get("is_bot")) or user_id == SLACKBOT,
        deleted=bool(user.get("deleted")),
        guest=bool(user.get("is_restricted") or user.get("is_ultra_restricted")),
    )


class SlackDirectory:
    """Implements `bot.core.announcements.audience.Directory` on a WebClient."""

    def __init__(self, client: WebClient, *, page_size: int = 1000) -> None:
        if page_size < 1:
            raise ValueError("page_size must be 1 or more")
        self.client = client
        self.page_size = page_size

    def everyone(self) -> Iterator[Person]:
        """Every user of the workspace, one users.list page at a time."""
        for page in self._pages("users.list", self.client.users_list, limit=self.page_size):
            for user in page.get("members") or []:
                yield to_person(user)

    def channel_members(self, channel: str) -> list[str]:
        members: list[str] = []
        for page in self._pages(
            "conversations.members",
            self.client.conversations_members,
            channel=channel,
            limit=MEMBERS_PAGE,
        ):
            members.extend(str(member) for member in page.get("members") or [])
        return members

    def group_members(self, group: str) -> list[str]:
        response = self._call(
            "usergroups.users.list", self.client.usergroups_users_list, usergroup=group
        )
        return [str(user) for user in response.get("users") or []]

    def person(self, user_id: str) -> Person | None:
        response = self._find("users.info", self.client.users_info, "user_not_found", user=user_id)
        return to_person(response["user"]) if response is not None else None

    def by_email(self, email: str) -> Person | None:
        response = self._find(
            "users.lookupByEmail", self.client.users_lookupByEmail, "users_not_found", email=email
        )
        return to_person(response["user"]) if response is not None else None

    def can_post(self, channel: str) -> bool:
        """Whether the bot is a member of the channel (Slack refuses posts otherwise:
        `not_in_channel`). A private channel it is not in looks like `channel_not_found`."""
        response = self._find(
            "conversations.info",
            self.client.conversations_info,
            "channel_not_found",
            channel=channel,
        )
        if response is None:
            return False
        info = response.get("channel") or {}
        return bool(info.get("is_member")) and not info.get("is_archived")

    # ------------------------------------------------------------------ calls

    def _pages(
        self, method: str, call: Callable[..., SlackResponse], **kwargs: Any
    ) -> Iterator[SlackResponse]:
        cursor = ""
        while True:
            response = self._call(method, call, **kwargs, **({"cursor": cursor} if cursor else {}))
            yield response
            metadata = response.get("response_metadata") or {}
            cursor = str(metadata.get("next_cursor") or "")
            if not cursor:
                return

    def _find(
        self, method: str, call: Callable[..., SlackResponse], missing: str, **kwargs: Any
    ) -> SlackResponse | None:
        """Like `_call`, but None when Slack answers the error code `missing`."""
        try:
            return self._call(method, call, **kwargs)
        except DirectoryError as exc:
            if exc.code == missing:
                return None
            raise

    def _call(
        self, method: str, call: Callable[..., SlackResponse], **kwargs: Any
    ) -> SlackResponse:
        """`call(**kwargs)`, or DirectoryError with Slack's error code."""
        try:
            return call(**kwargs)
        except (SlackApiError, SlackClientError, OSError) as exc:
            code = slack_error_code(exc)
            raise DirectoryError(code, f"slack {method} failed: {code}") from exc
