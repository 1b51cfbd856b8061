"""Child processes of the multi-process and kill -9 tests: read their next line, kill them."""

from __future__ import annotations

import select
import signal
import subprocess


def wait_for_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's next line of output; fails the test when none comes within `timeout`."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"worker {process.pid} said nothing within {timeout}s")
    return process.stdout.readline().strip()


def kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL the child (if it still runs) and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
