"""The Teams app package an admin uploads: `manifest.json` (schema 1.17) and two icons, zipped.

It asks for what the bot uses and nothing else:
- a bot in the `personal` scope (questions in a 1:1 chat, answers relayed from support) and the
  `team` scope (@mentions in channels, tickets in the support channel);
- `messageTeamMembers`: writing to someone's 1:1 chat first (a supporter's reply, "resolved");
- the resource-specific permission `ChannelMessage.Read.Group`, granted per team on install, so
  a supporter's plain reply in a ticket's thread reaches the bot (without it Teams delivers only
  messages that @mention the bot). The bot acts only on @mentions and ticket-thread replies.

    data = package(app_id="…", domain="mobilize.example.com")   # bytes of the .zip
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
import zlib
from typing import Any

MANIFEST_VERSION = "1.17"
SCHEMA = (
    "https://developer.microsoft.com/en-us/json-schemas/teams/"
    f"v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"
)
ACCENT = (0x2E, 0x5E, 0xAA)  # the colour icon's background
RSC_PERMISSIONS = ("ChannelMessage.Read.Group",)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def manifest(
    *,
    app_id: str,
    domain: str,
    version: str = "1.0.0",
    name: str = "Mobilize",
    organisation: str = "Mobilize",
    rollout: str = "the rollout",
) -> dict[str, Any]:
    """The app manifest for the bot `app_id`, served at `https://<domain>/api/messages`."""
    if not _GUID.match(app_id):
        raise ValueError(f"TEAMS_APP_ID {app_id!r} is not a GUID")
    domain = domain.lower().strip()
    if not _DOMAIN.match(domain):
        raise ValueError(f"{domain!r} is not a domain name like mobilize.example.com")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"version {version!r} must look like 1.0.0")
    site = f"https://{domain}/"
    return {
        "$schema": SCHEMA,
        "manifestVersion": MANIFEST_VERSION,
        "version": version,
        "id": app_id,
        "developer": {
            "name": organisation[:32],
            "websiteUrl": site,
            "privacyUrl": site + "privacy",
            "termsOfUseUrl": site + "terms",
        },
        "name": {"short": name[:30], "full": f"{name}: help with {rollout}"[:100]},
        "description": {
            "short": f"Answers your questions about {rollout}."[:80],
            "full": (
                f'{name} answers "how do I…" questions about {rollout} from the programme\'s '
                "FAQ, in a 1:1 chat or when you @mention it in a channel. When it cannot help, "
                "it passes your question to the support team and brings their reply back to you."
            )[:4000],
        },
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": "#{:02X}{:02X}{:02X}".format(*ACCENT),
        "bots": [
            {
                "botId": app_id,
                "scopes": ["personal", "team"],
                "isNotificationOnly": False,
                "supportsFiles": False,
                "commandLists": [
                    {
                        "scopes": ["personal", "team"],
                        "commands": [
                            {
                                "title": "How do I sign in?",
                                "description": "Ask any question about the rollout",
                            }
                        ],
                    }
                ],
            }
        ],
        "permissions": ["messageTeamMembers"],
        "validDomains": [domain],
        "webApplicationInfo": {"id": app_id, "resource": f"api://{domain}/{app_id}"},
        "authorization": {
            "permissions": {
                "resourceSpecific": [
                    {"name": permission, "type": "Application"} for permission in RSC_PERMISSIONS
                ]
            }
        },
    }


def package(**options: Any) -> bytes:
    """The .zip to upload: manifest.json, color.png (192×192), outline.png (32×32)."""
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", json.dumps(manifest(**options), indent=2) + "\n")
        archive.writestr("color.png", color_icon())
        archive.writestr("outline.png", outline_icon())
    return data.getvalue()


# ---------------------------------------------------------------------- icons


def color_icon(size: int = 192) -> bytes:
    """The full-colour icon: a white "M" on the accent colour, opaque."""
    white, accent = (255, 255, 255, 255), (*ACCENT, 255)
    return _png(size, lambda x, y: white if _in_m(x, y, size, margin=0.22) else accent)


def outline_icon(size: int = 32) -> bytes:
    """The outline icon Teams requires: white on a transparent background only."""
    white, clear = (255, 255, 255, 255), (255, 255, 255, 0)
    return _png(size, lambda x, y: white if _in_m(x, y, size, margin=0.12) else clear)


def _in_m(x: int, y: int, size: int, *, margin: float) -> bool:
    """Whether pixel (x, y) is on the letter M drawn in a square with the given margin."""
    low, high = size * margin, size * (1 - margin)
    if not (low <= x < high and low <= y < high):
        return False
    width = high - low
    u, v = (x - low) / width, (y - low) / width
    stroke = 0.2
    if u < stroke or u > 1 - stroke:
        return True  # the two legs
    # the two diagonals meeting in the middle, halfway down
    left = abs(v - u) < stroke * 0.75 and v < 0.6
    right = abs(v - (1 - u)) < stroke * 0.75 and v < 0.6
    return left or right


def _png(size: int, pixel: Any) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(size)) for y in range(size)
    )

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )
