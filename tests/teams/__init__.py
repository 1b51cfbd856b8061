"""Loopback stand-ins for Microsoft's services that a Teams bot talks to.

- ``identity.FakeIdentity``: OpenID metadata + JWKS (keys that sign activities sent to the
  bot) and an Entra token endpoint (client credentials).
- ``fake_connector.FakeTeams``: the Bot Connector REST API v3 at its ``url`` (the
  ``serviceUrl``), and the side that posts signed activities to the bot.
- ``fake_graph.FakeGraph``: the Microsoft Graph v1.0 calls the bot makes.
- ``directory.Directory``: the tenant they share (users, teams, channels, app installations).

``with FakeTeams() as teams:`` starts all three; read the module docstrings for the API.
"""
