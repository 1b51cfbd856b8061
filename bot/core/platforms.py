"""Which chat platform an id belongs to. Ids are unambiguous by their shape, so a delivery row,
an audience part or a survey ledger row needs no separate platform column to be routed:

- Slack: upper-case letters and digits, starting with a letter (`U0123ABCD` a person,
  `C…`/`G…` a channel, `S…` a user group, `D…` a 1:1 chat).
- Microsoft Teams: a person or group is a Microsoft Entra object id (a GUID, lower-case
  hex); a conversation id has a colon (`19:…@thread.tacv2` a channel, `a:…` a 1:1 chat,
  `29:…` a Bot Connector user id).
"""

from __future__ import annotations

import re

SLACK = "slack"
TEAMS = "teams"
# In the order a person on both platforms is reached: the first one they are on.
PLATFORMS = (SLACK, TEAMS)

GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
TEAMS_CHANNEL = re.compile(r"19:[A-Za-z0-9_\-.]+@thread\.(?:tacv2|skype)")


def platform_of(identifier: str) -> str:
    """`teams` for an Entra object id or a Teams conversation id, else `slack`."""
    if GUID.fullmatch(identifier) or ":" in identifier:
        return TEAMS
    return SLACK


def is_teams_channel(identifier: str) -> bool:
    """A Teams channel conversation id (`19:…@thread.tacv2`)."""
    return bool(TEAMS_CHANNEL.fullmatch(identifier))
