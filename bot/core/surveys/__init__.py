"""Pulse surveys: definitions and schedules (`definitions`), and the statistics and anonymity
rules that turn answers into results (`results`)."""
