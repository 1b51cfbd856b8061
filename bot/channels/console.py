"""`mobilize chat`: the same core in a terminal. Reads questions from stdin when piped."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from bot.core.faq.desk import Asker, FaqDesk
from bot.core.messages import FAQ_PICK, FAQ_RELATED, Address, Message, Posted

ASKER = Asker(user_id="console", channel_id="console", platform="console")


class ConsoleChat:
    """The `Chat` port on a terminal: messages are printed, never sent anywhere."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def post(self, address: Address, message: Message) -> Posted | None:
        show(self.console, message)
        return Posted(address.channel, "0")

    def update(self, posted: Posted, message: Message) -> None:
        show(self.console, message)

    def permalink(self, channel: str, ts: str) -> str | None:
        return None


def show(console: Console, message: Message, *, numbered: bool = True) -> list[str]:
    """Print a message; returns the values of its pick buttons, numbered from 1."""
    for part in message.parts:
        console.print(Markdown(part.body) if part.trusted else escape(part.body))
    for line in message.context:
        console.print(f"[dim]{escape(line)}[/dim]")
    picks = [b.value for b in message.buttons if b.action_id in {FAQ_PICK, FAQ_RELATED}]
    if numbered and picks:
        labels = [b.label for b in message.buttons if b.action_id in {FAQ_PICK, FAQ_RELATED}]
        for number, label in enumerate(labels, start=1):
            console.print(f"  [bold]{number}[/bold]. {escape(label)}")
    return picks


def run_chat(desk: FaqDesk, *, stdin: TextIO = sys.stdin, console: Console | None = None) -> None:
    """Answer questions until EOF or `quit`; a number picks a suggested or related entry."""
    console = console or Console()
    interactive = stdin.isatty()
    if interactive:
        console.print(
            f"[bold]Mobilize[/bold] · {escape(desk.engine.state.rollout.name)} rollout. "
            "Ask a question (type [bold]quit[/bold] to leave)."
        )
    picks: list[str] = []
    while True:
        if interactive:
            console.print("[bold cyan]you>[/bold cyan] ", end="")
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text.lower() in {"quit", "exit", "q"}:
            break
        if not interactive:
            console.print(f"[bold cyan]you>[/bold cyan] {escape(text)}")
        console.print("[bold green]bot>[/bold green]")
        if text.isdigit() and 0 < int(text) <= len(picks):
            message = desk.pick(picks[int(text) - 1], ASKER.user_id)
        else:
            message = desk.ask(text, ASKER).message
        picks = show(console, message)
        console.print()
