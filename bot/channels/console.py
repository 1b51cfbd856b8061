"""`mobilize chat`: the same conversation core in a terminal. Reads from stdin when piped.

Everything the bot says is printed with its buttons numbered; typing a number clicks that
button (Helpful, Ask a person, a suggested entry…), anything else is said to the bot.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape

from bot.core.conversation import Conversation, Said
from bot.core.messages import Address, Button, Interaction, Message, Posted

USER = "console"
CHANNEL = "console"


class ConsoleChat:
    """The `Chat` port on a terminal: messages are printed, never sent anywhere. The buttons
    of the last message shown are the ones a number clicks."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.buttons: list[Button] = []
        self._count = 0

    def post(self, address: Address, message: Message) -> Posted | None:
        if address.channel not in (CHANNEL, USER):
            self.console.print(f"[dim](to {escape(address.channel)})[/dim]")
        self.buttons = show(self.console, message) or self.buttons
        self._count += 1
        return Posted(address.channel, str(self._count))

    def update(self, posted: Posted, message: Message) -> None:
        self.console.print("[dim](updated)[/dim]")
        show(self.console, message)

    def permalink(self, channel: str, ts: str) -> str | None:
        return None


def show(console: Console, message: Message) -> list[Button]:
    """Print a message with its buttons numbered from 1; returns those buttons."""
    for part in message.parts:
        console.print(Markdown(part.body) if part.trusted else escape(part.body))
    for line in message.context:
        console.print(f"[dim]{escape(line)}[/dim]")
    for number, button in enumerate(message.buttons, start=1):
        link = f" [dim]{escape(button.url)}[/dim]" if button.url else ""
        console.print(f"  [bold]{number}[/bold]. {escape(button.label)}{link}")
    return list(message.buttons)


def run_chat(
    conversation: Conversation, *, stdin: TextIO = sys.stdin, console: Console | None = None
) -> None:
    """Talk to the bot until EOF or `quit`; a number clicks a button of the last message."""
    console = console or Console()
    chat = ConsoleChat(console)
    interactive = stdin.isatty()
    if interactive:
        console.print(
            f"[bold]Mobilize[/bold] · {escape(conversation.desk.engine.state.rollout.name)} "
            "rollout. Ask a question; a number clicks a button (type [bold]quit[/bold] to leave)."
        )
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
        if text.isdigit() and 0 < int(text) <= len(chat.buttons):
            button = chat.buttons[int(text) - 1]
            if button.url:
                console.print(f"Open {escape(button.url)}")
            else:
                click = Interaction(button.action_id, button.value, USER, CHANNEL)
                reply = conversation.clicked(click, chat)
                if reply is not None:
                    chat.post(Address(CHANNEL), reply.message)
        else:
            conversation.said(Said(USER, CHANNEL, (text,), direct=True, platform="console"), chat)
        console.print()
