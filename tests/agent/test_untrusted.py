"""Journal files a user could have written are not evidence: the reader refuses
them unread, the real agent reports each once (journal_error) and sets it
aside as <name>.untrusted, across restarts.  Plus: a refused NATS login says
why (the server's "Authorization Violation"), not just "no servers"."""

import asyncio
import json
import os
import shutil
import stat
import subprocess

import pytest
from tests.agent.agentkit import job_env, journal_files, stream_messages, write_hooks_fast
from tests.helpers.pipeline import agent_cmd
from tests.helpers.servers import NatsServer

from emitter import contract as c
from emitter import natsio, otlp, spool

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _st(uid=0, mode=0o100600):
    return os.stat_result((mode, 1, 1, 1, uid, uid, 10, 0, 0, 0))


def test_trust_problem_names_owner_and_mode():
    assert spool.trust_problem(_st(), euid=0) is None
    assert spool.trust_problem(_st(uid=1000), euid=1000) is None  # the agent's own files
    assert spool.trust_problem(_st(uid=0), euid=1000) is None  # root's files
    assert "uid 1000, not root" in spool.trust_problem(_st(uid=1000), euid=0)
    why = spool.trust_problem(_st(mode=0o100666), euid=0)
    assert "0666" in why and "group and others" in why
    assert "0620" in spool.trust_problem(_st(mode=0o100620), euid=0)
    assert "0644" not in (spool.trust_problem(_st(mode=0o100644), euid=0) or "")
    assert "regular" in spool.trust_problem(_st(mode=stat.S_IFIFO | 0o600), euid=0)


@needs_root
def test_reader_refuses_foreign_writable_symlinked_and_fifo_files_unread(tmp_path):
    write_hooks_fast(tmp_path, 3)
    a, b, good = spool.list_files(str(tmp_path))
    os.chown(a, 1000, 1000)
    os.chmod(b, 0o666)
    link = tmp_path / ("0" * 20 + "-link.jsonl")
    link.symlink_to(good)
    fifo = tmp_path / ("0" * 20 + "-fifo.jsonl")
    os.mkfifo(fifo)  # opened for reading would block a naive reader
    files = {jf.path: jf for jf in spool.scan(str(tmp_path), full=False)}
    assert files[a].state == spool.UNTRUSTED and "uid 1000" in files[a].untrusted
    assert files[b].state == spool.UNTRUSTED and "0666" in files[b].untrusted
    assert files[str(link)].untrusted == "is a symlink"
    assert "regular" in files[str(fifo)].untrusted
    assert all(not jf.entries for jf in files.values() if jf.state == spool.UNTRUSTED)
    assert [jf.path for jf in spool.ready(list(files.values()))] == [good]


@needs_root
def test_file_replaced_after_scan_is_refused_at_load(tmp_path):
    write_hooks_fast(tmp_path, 1)
    (p,) = spool.list_files(str(tmp_path))
    (jf,) = spool.scan(str(tmp_path), full=False)
    assert jf.state == spool.COMPLETE
    os.chmod(p, 0o646)
    jf = spool.load_full(jf)
    assert jf.state == spool.UNTRUSTED and not jf.entries and "others" in jf.untrusted


@needs_root
def test_agent_reports_untrusted_file_once_across_restarts_and_keeps_it(tmp_path, nats_server):
    j = tmp_path / "journal"
    write_hooks_fast(j, 2)
    forged, good = (j / n for n in journal_files(j))
    data = forged.read_bytes()
    os.chown(forged, 1000, 1000)
    os.chmod(forged, 0o666)

    def once():
        r = subprocess.run(agent_cmd(nats_server.url, j, "--once", "--node", "n1"), env=job_env(0),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r

    r = once()
    assert str(forged) in r.stderr and "not shipped" in r.stderr
    assert journal_files(j) == []  # the good file and the report shipped; the forged one moved
    kept = j / (forged.name + spool.UNTRUSTED_SUFFIX)
    assert kept.read_bytes() == data  # never deleted, never altered
    st = kept.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o666)

    def lines():
        msgs = stream_messages(nats_server.url)
        return [json.loads(x) for m in msgs for x in otlp.journal_lines(otlp.decode_trace(m.data))]

    recs = lines()
    forged_hook = json.loads(data.splitlines()[0])[c.R_HOOK_ID]
    assert forged_hook not in {x[c.R_HOOK_ID] for x in recs}, "the forged file must not be shipped"
    (err,) = [x for x in recs if x[c.R_KIND] == c.K_JOURNAL_ERROR]
    assert err[c.R_PATH] == str(forged) and err[c.R_NODE] == "n1"
    for part in ("uid 1000", "0666", str(kept), "remove it"):
        assert part in err[c.R_REASON], part

    # Restart: nothing new to report; a second forged file with the same name
    # is reported too, and set aside next to the first without overwriting it.
    once()
    assert len([x for x in lines() if x[c.R_KIND] == c.K_JOURNAL_ERROR]) == 1
    shutil.copy(kept, forged)
    os.chmod(forged, 0o666)
    once()
    assert len([x for x in lines() if x[c.R_KIND] == c.K_JOURNAL_ERROR]) == 2
    assert kept.read_bytes() == data and (j / (forged.name + ".1" + spool.UNTRUSTED_SUFFIX)).exists()


def test_refused_login_names_the_server_error(tmp_path):
    srv = NatsServer(store_dir=tmp_path / "nats", config="authorization { user: a, password: b }\n")
    try:
        srv.start()
        bad = natsio.NatsOptions(servers=srv.url, user="a", password="wrong", connect_timeout=1,
                                 max_reconnect_attempts=1)
        with pytest.raises(natsio.NatsUnavailable) as ei:
            asyncio.run(natsio.connect(bad))
        msg = str(ei.value)
        assert "Authorization Violation" in msg and srv.url in msg and "--user" in msg
        seen = []

        async def cb(exc):
            seen.append(exc)

        with pytest.raises(natsio.NatsUnavailable):
            asyncio.run(natsio.connect(bad, error_cb=cb))
        assert seen, "a caller's error_cb still sees every error"
    finally:
        srv.cleanup()
