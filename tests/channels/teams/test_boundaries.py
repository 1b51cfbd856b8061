"""The core speaks no chat platform: nothing under bot/core imports Slack's or Microsoft's SDKs."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[3] / "bot" / "core"
PLATFORM = ("slack_sdk", "slack_bolt", "microsoft_teams", "botbuilder", "bot.channels")


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_bot_core_imports_no_platform_sdk() -> None:
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) > 10
    offending = {
        str(path.relative_to(CORE)): sorted(
            name
            for name in imports(path)
            if name.split(".")[0] in {p.split(".")[0] for p in PLATFORM[:4]}
            or name.startswith("bot.channels")
        )
        for path in modules
    }
    assert {path: names for path, names in offending.items() if names} == {}
