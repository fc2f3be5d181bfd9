"""As root, the agent and the collector refuse a credential file (or the
agent a journal dir) that a non-root user owns or can write, naming the file
and the bit (issue 12.4; the check is emitter.config.check_trusted)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.pipeline import HOOKSCOPE, ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies to root only")


def _seed(tmp_path, mode):
    p = tmp_path / "node.nk"
    p.write_text("SUAxxxx\n")
    os.chmod(p, mode)
    return p


def test_agent_refuses_a_world_writable_nkey_and_journal_dir(tmp_path):
    seed = _seed(tmp_path, 0o666)
    r = subprocess.run(HOOKSCOPE + ["agent", "--once", "--nats", "nats://127.0.0.1:1", "--gpu", "none",
                                    "--journal", str(tmp_path / "j"), "--nkey", str(seed)],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode != 0 and str(seed) in r.stderr and "o+w" in r.stderr, r.stderr
    os.chmod(seed, 0o600)
    journal = tmp_path / "j2"
    journal.mkdir()
    os.chmod(journal, 0o777)
    r = subprocess.run(HOOKSCOPE + ["agent", "--once", "--nats", "nats://127.0.0.1:1", "--gpu", "none",
                                    "--journal", str(journal)],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode != 0 and str(journal) in r.stderr, r.stderr


def test_collector_refuses_a_credential_file_a_user_owns(tmp_path):
    from collector.config import CollectorConfig
    from collector.errors import CollectorError

    seed = _seed(tmp_path, 0o600)
    os.chown(seed, 65534, 65534)  # nobody
    with pytest.raises(CollectorError) as ei:
        CollectorConfig(nats_url="nats://127.0.0.1:1", db=str(tmp_path / "h.duckdb"), archive=None,
                        nkey=str(seed))
    assert str(seed) in str(ei.value)
