"""The Teams app package: a manifest Teams accepts, icons of the right size and kind."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bot.channels.teams.package import MANIFEST_VERSION, manifest, package
from bot.cli import app

APP_ID = "00000000-0000-4000-8000-00000000b07a"


def png(data: bytes) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """Width, height and RGBA pixels of an 8-bit RGBA PNG without filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 6)
    position, idat = 8, b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IDAT":
            idat += body
        position += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 4 + 1
    pixels = [
        tuple(raw[row * stride + 1 + col * 4 : row * stride + 5 + col * 4])
        for row in range(height)
        for col in range(width)
    ]
    return width, height, pixels  # type: ignore[return-value]


def test_the_package_holds_a_valid_manifest_and_icons() -> None:
    with zipfile.ZipFile(io.BytesIO(package(app_id=APP_ID, domain="bot.fernhill.example"))) as z:
        assert sorted(z.namelist()) == ["color.png", "manifest.json", "outline.png"]
        data = json.loads(z.read("manifest.json"))
        color, outline = png(z.read("color.png")), png(z.read("outline.png"))
    assert tuple(int(p) for p in data["manifestVersion"].split(".")) >= (1, 17)
    assert data["$schema"].endswith(f"v{MANIFEST_VERSION}/MicrosoftTeams.schema.json")
    assert data["id"] == APP_ID and data["bots"][0]["botId"] == APP_ID
    assert data["bots"][0]["scopes"] == ["personal", "team"]
    assert len(data["name"]["short"]) <= 30 and len(data["name"]["full"]) <= 100
    assert len(data["description"]["short"]) <= 80 and len(data["description"]["full"]) <= 4000
    assert all(
        data["developer"][k].startswith("https://")
        for k in ("websiteUrl", "privacyUrl", "termsOfUseUrl")
    )
    assert data["validDomains"] == ["bot.fernhill.example"]
    assert data["permissions"] == ["messageTeamMembers"]
    assert data["authorization"]["permissions"]["resourceSpecific"] == [
        {"name": "ChannelMessage.Read.Group", "type": "Application"}
    ]
    assert data["webApplicationInfo"]["id"] == APP_ID  # RSC needs it
    assert data["icons"] == {"color": "color.png", "outline": "outline.png"}
    assert color[:2] == (192, 192) and all(p[3] == 255 for p in color[2])
    assert outline[:2] == (32, 32)
    # Outline: white on transparent only, and something is drawn.
    assert all(p[3] == 0 or p[:3] == (255, 255, 255) for p in outline[2])
    assert any(p[3] == 255 for p in outline[2]) and any(p[3] == 0 for p in outline[2])


def test_bad_ids_and_domains_are_refused() -> None:
    with pytest.raises(ValueError, match="GUID"):
        manifest(app_id="not-a-guid", domain="bot.example.com")
    with pytest.raises(ValueError, match="domain"):
        manifest(app_id=APP_ID, domain="https://bot.example.com/")


def test_the_command_writes_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import get_settings

    monkeypatch.setenv("TEAMS_APP_ID", APP_ID)
    get_settings.cache_clear()
    out = tmp_path / "app.zip"
    try:
        result = CliRunner().invoke(
            app, ["teams", "package", "--out", str(out), "--domain", "bot.example.com"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert zipfile.ZipFile(out).read("manifest.json")
