"""Helpers for the runner tests: real scripts in real directories, the real
runner process where a process boundary is involved."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from emitter import contract as c

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
_fd, EMPTY_CONFIG = tempfile.mkstemp(prefix="hookscope-test-", suffix=".toml")
os.close(_fd)
atexit.register(lambda: os.path.exists(EMPTY_CONFIG) and os.unlink(EMPTY_CONFIG))
# The config parse cache of these tests (and of the runners they start) stays out of /run.
os.environ["HOOKSCOPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="hookscope-test-cache-")
atexit.register(shutil.rmtree, os.environ["HOOKSCOPE_CACHE_DIR"], True)


def mkscript(d, name, body="exit 0", mode=0o755, shebang="#!/bin/sh\n"):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(shebang + body + "\n")
    os.chmod(p, mode)
    return p


def records(journal_dir):
    """All records of a journal directory in seq order, asserting no damage."""
    from emitter.journal import read_records

    out = []
    for p in sorted(Path(journal_dir).glob("*" + c.JOURNAL_SUFFIX)):
        recs, damage = read_records(p)
        assert not damage, damage
        out.extend(recs)
    return sorted(out, key=lambda r: r[c.R_SEQ])


def kinds(recs):
    return [r[c.R_KIND] for r in recs]


def hook_cmd(*args):
    return [sys.executable, "-m", "emitter.cli", *args]


def run_hook(args, env=None, timeout=30, input=None):
    """``hookscope run ARGS`` as a real process; returns CompletedProcess (bytes)."""
    e = dict(os.environ)
    e.pop("SLURM_SCRIPT_CONTEXT", None)
    e.pop("HOOKSCOPE_JOURNAL_DIR", None)
    # Never pick up this machine's /etc/hookscope/hookscope.toml.
    e["HOOKSCOPE_CONFIG"] = EMPTY_CONFIG
    if env:
        e.update(env)
    return subprocess.run(hook_cmd("run", *args), cwd=ROOT, env=e, capture_output=True, timeout=timeout,
                          input=input)


@pytest.fixture
def jdir(tmp_path):
    return tmp_path / "journal"


@pytest.fixture
def settings(jdir):
    """Runner settings for in-process runs: no fsync, no passthrough to pytest's fds."""
    from emitter.config import runner_settings

    def make(**over):
        base = dict(journal_dir=str(jdir), fsync=False, passthrough=False, node="n1", cluster="t")
        base.update(over)
        return runner_settings({}, **base)

    return make
