"""Prometheus metrics, served at GET /metrics."""

from prometheus_client import Counter, Histogram

QUESTIONS = Counter("mobilize_questions_total", "Questions answered, by decision", ["decision"])
ANSWER_SECONDS = Histogram(
    "mobilize_answer_seconds",
    "Time from a question to the decision",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SLACK_ERRORS = Counter("mobilize_slack_errors_total", "Slack Web API errors", ["method", "error"])
EVENTS = Counter("mobilize_slack_events_total", "Slack requests handled", ["kind"])
DUPLICATES = Counter("mobilize_slack_duplicate_events_total", "Retried Slack events dropped")
CONTENT_RELOADS = Counter("mobilize_content_reloads_total", "Content reloads", ["result"])
