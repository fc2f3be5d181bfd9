"""Fixtures of the real-Slurm tier: one cluster per session, reset per test.

The cluster (munged, slurmctld, slurmd; see cluster.py) starts once; each test
gets it with the queue empty and the node resumed, and switches hook settings
with a reconfigure.  ``/etc/hookscope/hookscope.toml`` is backed up before the
first scenario writes it and restored at the end of the session.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.slurm.cluster import SlurmCluster, reap_stale
from tests.tiers import require, require_slurm
from tests.slurm.scenario import CONFIG_HEADER, CONFIG_PATH, PROLOG_EPILOG_TIMEOUT, Scenario, hook_missing_reason


@pytest.fixture(scope="session")
def slurm_cluster(artifacts_dir):
    require_slurm()
    reap_stale()
    # Not under pytest's 0700 tmp dir: munged runs as user munge and must
    # reach its own directory inside this one.
    root = Path(tempfile.mkdtemp(prefix="hookscope-slurm-"))
    c = SlurmCluster(root, prolog_epilog_timeout=PROLOG_EPILOG_TIMEOUT)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        keep = artifacts_dir / "slurm-tier"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(c.log_dir, keep / "log", dirs_exist_ok=True)
        if c.conf_path.exists():
            shutil.copy(c.conf_path, keep / "slurm.conf")
        shutil.rmtree(root, ignore_errors=True)


LOCK_PATH = "/tmp/hookscope-slurm-tier.lock"
LOCK_WAIT_S = 900


@pytest.fixture(scope="session")
def etc_config():
    """Path of the production config file, with its original content restored
    (or removed, with /etc/hookscope if we created it) at the end.

    The file is machine-wide, so two test runs on one machine take turns: the
    second waits on a lock (up to LOCK_WAIT_S) instead of clobbering it."""
    import fcntl

    lock = open(LOCK_PATH, "a")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.fail(f"another test run has held {LOCK_PATH} for {LOCK_WAIT_S} s "
                            f"(it owns {CONFIG_PATH}); wait for it or end it", pytrace=False)
            time.sleep(0.5)
    try:
        yield from _restoring_config()
    finally:
        lock.close()


def _restoring_config():
    d = CONFIG_PATH.parent
    made_dir = not d.exists()
    old = CONFIG_PATH.read_bytes() if CONFIG_PATH.exists() else None
    if old is not None and old.startswith(CONFIG_HEADER.encode()):
        old = None  # left behind by a test run that was killed: not the admin's
    try:
        yield CONFIG_PATH
    finally:
        if old is not None:
            CONFIG_PATH.write_bytes(old)
        else:
            CONFIG_PATH.unlink(missing_ok=True)
            if made_dir:
                try:
                    d.rmdir()
                except OSError:
                    pass


@pytest.fixture
def cluster(slurm_cluster):
    """The session cluster with an empty queue and an idle node, before and after."""
    slurm_cluster.cancel_all()
    slurm_cluster.resume()
    yield slurm_cluster
    slurm_cluster.cancel_all()
    slurm_cluster.resume()


@pytest.fixture
def deploy(cluster, etc_config, request):
    """deploy(mode, scripts) -> Scenario: build the hook dirs, point slurm.conf
    (and, for mode "hookscope", /etc/hookscope/hookscope.toml) at them, reconfigure."""
    made = []

    def _deploy(mode, scripts=None, **kw):
        if mode == "hookscope":
            r = hook_missing_reason()
            require(r is None, r or "")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        sc = Scenario(cluster.root / "scenarios" / f"{name}-{len(made)}", scripts or {}, **kw)
        made.append(sc)
        if mode == "hookscope":
            etc_config.parent.mkdir(mode=0o755, exist_ok=True)
            tmp = etc_config.with_suffix(".tmp")
            tmp.write_text(sc.runner_config())
            os.chmod(tmp, 0o644)
            os.replace(tmp, etc_config)
        cluster.set_hooks(**sc.slurm_hooks(mode))
        return sc

    yield _deploy


HOOKSCOPE = Path(sys.executable).parent / "hookscope"
#: The pipeline's subcommands (asked as the installed CLI, in a child process,
#: exactly as the test then runs them).
PIPELINE = ("agent", "collect", "why")


def pipeline_missing_reason():
    if not HOOKSCOPE.exists():
        return f"{HOOKSCOPE} is not installed (pip install -e . in the venv)"
    missing = []
    for cmd in PIPELINE:
        p = subprocess.run([str(HOOKSCOPE), cmd, "--help"], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            missing.append(f"'hookscope {cmd}': {(p.stderr or p.stdout).strip()[-300:]}")
    return "; ".join(missing) or None


@pytest.fixture
def pipeline(nats_server, tmp_path):
    """run(journal_dir, node) -> the parsed ``hookscope why NODE --json``."""
    r = pipeline_missing_reason()
    require(r is None, f"the issue-5 pipeline is not complete: {r}")
    db = tmp_path / "store" / "hookscope.duckdb"
    db.parent.mkdir()

    def step(*args, timeout=90):
        p = subprocess.run([str(HOOKSCOPE), *args], capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, (f"hookscope {' '.join(args)} exited {p.returncode}\n"
                                   f"stdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-2000:]}")
        return p

    def run(journal_dir, node):
        step("agent", "--once", "--nats", nats_server.url, "--journal", str(journal_dir))
        step("collect", "--once", "--nats", nats_server.url, "--db", str(db))
        out = step("why", node, "--json", "--db", str(db)).stdout
        try:
            return json.loads(out)
        except ValueError:
            pytest.fail(f"hookscope why --json printed no JSON: {out[:2000]}")

    return run


