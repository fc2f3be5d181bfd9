"""A small tmpfs for tests that need a small or full disk (root: mount)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """Mount a tmpfs with ``options`` (e.g. ``size=64m``) at ``path`` (created),
    or skip the test saying why it cannot; unmounted on exit."""
    if os.geteuid() != 0:
        pytest.skip("this test mounts a small tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
