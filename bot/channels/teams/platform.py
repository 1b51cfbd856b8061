"""Microsoft Teams as the core sees it: the `Chat` port, the outbox's `Sender`, the audiences'
`Directory` and Teams' rate limits, built from settings and sharing one Bot Connector client
(one asyncio loop, one token cache, one References)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from bot.channels.teams.app import teams_chat
from bot.channels.teams.chat import TeamsChat
from bot.channels.teams.directory import TeamsDirectory
from bot.channels.teams.graph import GraphClient
from bot.channels.teams.refs import References
from bot.channels.teams.sender import TeamsSender
from bot.config import Settings
from bot.core.outbox import Limits


@dataclass
class TeamsParts:
    refs: References
    chat: TeamsChat
    graph: GraphClient
    sender: TeamsSender
    directory: TeamsDirectory
    limits: Limits

    def close(self) -> None:
        self.graph.close()
        self.chat.close()


def teams_limits(settings: Settings) -> Limits:
    """The outbox's budget on Teams: TEAMS_SEND_RATE messages a second for the tenant (Teams
    allows an app about 30–50 requests a second per tenant), a tenth of a second's worth at
    once; a channel gets at most one post every half second (Teams: 7 a second, 60 in 30 s,
    per conversation); edits at the same pace as posts, as Teams counts them alike."""
    rate = settings.teams_send_rate
    return Limits(
        posts_per_second=rate,
        burst=max(2.0, rate / 10),
        edits_per_second=max(1.0, rate / 4),
        per_channel_interval=0.5,
        # find() asks Teams nothing (it cannot read back): no budget to wait for
        reads_per_second=rate,
        read_burst=rate,
    )


def connect_teams(settings: Settings, db: Engine) -> TeamsParts:
    refs = References(db)
    chat = teams_chat(settings, refs)
    graph = GraphClient(tokens=chat.tokens, base_url=settings.teams_graph_url)
    sender = TeamsSender(
        chat=chat,
        graph=graph,
        install_for_users=settings.teams_install_for_users,
        catalog_app_id=settings.teams_catalog_app_id,
    )
    directory = TeamsDirectory(
        graph=graph, refs=refs, install_for_users=settings.teams_install_for_users
    )
    return TeamsParts(refs, chat, graph, sender, directory, teams_limits(settings))
