"""A Python script run in a process of its own and killed with SIGKILL at a chosen moment (real kills for
the fault tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def kill_9_when(script: str, ready: Callable[[], bool], timeout_s: float = 120) -> bool:
    """Run ``script`` with this interpreter and SIGKILL it as soon as ``ready()`` is true; returns whether
    it was killed (False: it finished first, or never got there within ``timeout_s``)."""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.002)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed and proc.returncode == -signal.SIGKILL
