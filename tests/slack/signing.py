"""Helpers to drive a Bolt app over HTTP the way Slack does: signed bodies, envelopes, retries."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from slack_bolt import App, BoltRequest
from slack_sdk.signature import SignatureVerifier

__all__ = [
    "FORM_CONTENT_TYPE",
    "SIGNING_SECRET",
    "UNROUTABLE_RESPONSE_URL",
    "action_body",
    "block_action",
    "bolt_server",
    "command_body",
    "event_body",
    "post",
    "signed_headers",
]

SIGNING_SECRET = "test-signing-secret"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# Loopback port 9 (discard): nothing listens, so a stray respond() fails fast and stays local.
UNROUTABLE_RESPONSE_URL = "http://127.0.0.1:9/response"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# An opener that ignores HTTP(S)_PROXY: test traffic must stay on loopback.
_OPENER = build_opener(ProxyHandler({}))


def signed_headers(
    body: str,
    *,
    secret: str = SIGNING_SECRET,
    timestamp: int | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Content-Type plus the X-Slack-Request-Timestamp / X-Slack-Signature pair for ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    if signature is None:  # only when timestamp or body is None
        raise ValueError("could not sign the request body")
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def event_body(
    event: dict[str, Any],
    *,
    event_id: str | None = None,
    team_id: str = "T1",
    api_app_id: str = "A1",
    bot_user_id: str = "UBOT",
) -> str:
    """An Events API ``event_callback`` envelope around ``event``, as JSON."""
    envelope = {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_hex(8)}",
    }
    return json.dumps(envelope)


def command_body(
    command: str,
    text: str,
    *,
    user_id: str = "U1",
    channel_id: str = "C1",
    trigger_id: str = "111.222",
    team_id: str = "T1",
    response_url: str = UNROUTABLE_RESPONSE_URL,
) -> str:
    """A slash command as Slack posts it (x-www-form-urlencoded)."""
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": team_id,
            "team_domain": "example",
            "channel_id": channel_id,
            "channel_name": "directmessage" if channel_id.startswith("D") else "general",
            "user_id": user_id,
            "user_name": user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A1",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
    )


def action_body(payload: dict[str, Any]) -> str:
    """``payload=<json>`` form body, as Slack posts block_actions / view_submission."""
    return urlencode({"payload": json.dumps(payload)})


def block_action(
    *,
    action_id: str,
    value: str,
    user_id: str = "U1",
    channel_id: str = "DU1",
    message_ts: str = "1700000000.000100",
    block_id: str = "b",
    thread_ts: str | None = None,
    team_id: str = "T1",
    response_url: str = UNROUTABLE_RESPONSE_URL,
    trigger_id: str = "111.222.abc",
) -> dict[str, Any]:
    """A realistic ``block_actions`` payload for a button clicked on a bot message.

    ``channel_id`` defaults to ``"DU1"``: FakeSlack's DM channel for U1.
    """
    message: dict[str, Any] = {
        "type": "message",
        "user": "UBOT",
        "bot_id": "BBOT",
        "app_id": "A1",
        "team": team_id,
        "ts": message_ts,
        "text": "",
        "blocks": [],
    }
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel_id,
        "is_ephemeral": False,
    }
    if thread_ts is not None:
        message["thread_ts"] = thread_ts
        container["thread_ts"] = thread_ts
    return {
        "type": "block_actions",
        "user": {
            "id": user_id,
            "username": user_id.lower(),
            "name": user_id.lower(),
            "team_id": team_id,
        },
        "api_app_id": "A1",
        "token": "legacy-verification-token",
        "container": container,
        "trigger_id": trigger_id,
        "team": {"id": team_id, "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {
            "id": channel_id,
            "name": "directmessage" if channel_id.startswith("D") else "general",
        },
        "message": message,
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "value": value,
                "type": "button",
                "text": {"type": "plain_text", "text": value, "emoji": True},
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def post(
    url: str,
    body: str,
    headers: dict[str, str],
    *,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    timeout: float = 5.0,
) -> tuple[int, str]:
    """POST ``body`` to a loopback ``url``; returns (status, body text) even for 4xx/5xx."""
    host = urlsplit(url).hostname or ""
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(f"tests only post to loopback, not {host!r}")
    all_headers = dict(headers)
    if retry_num is not None:
        all_headers["X-Slack-Retry-Num"] = str(retry_num)
        all_headers["X-Slack-Retry-Reason"] = retry_reason
    request = Request(url, data=body.encode("utf-8"), headers=all_headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8")
    except HTTPError as e:
        with e:
            return int(e.code), e.read().decode("utf-8", "replace")


class _BoltServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent clients must not overflow the listen backlog

    def __init__(self, app: App, path: str) -> None:
        self.app = app
        self.endpoint_path = path
        super().__init__(("127.0.0.1", 0), _BoltHandler)


class _BoltHandler(BaseHTTPRequestHandler):
    server: _BoltServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        path, _, query = self.path.partition("?")
        if path != self.server.endpoint_path:
            self._send(404, {}, "")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8") if length > 0 else ""
        headers: dict[str, str | Sequence[str]] = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.app.dispatch(BoltRequest(body=body, query=query, headers=headers))
        self._send(response.status, response.headers, response.body)

    def _send(self, status: int, headers: dict[str, Any], body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        for name, values in headers.items():
            if name.lower() == "content-length":
                continue
            for value in values if isinstance(values, list | tuple) else [values]:
                self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def bolt_server(app: App, *, path: str = "/slack/events") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (free port) for the block; yields the endpoint URL.

    Like Bolt's development server, but loopback-only, quiet and stoppable.
    """
    server = _BoltServer(app, path)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
