"""Mobilize: a chat bot that carries an organisation through the rollout of a new system."""

__version__ = "0.1.0"
