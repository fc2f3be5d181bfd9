"""Nothing silently stuck (issue 12.5): a hook too large for one message.

The issue's case: nine ``SLURM_*`` values of 127 KiB in ``hook_started`` make
a 2.34 MB message; it stayed in the spool with no journal_error and
``agent --once`` exited 0.  Now the hook is split across several messages,
each within the limit; a record too large on its own is cut in transit and
stays verifiable (its hash covers the long values' digests); none is left.
"""

from __future__ import annotations

import json
import subprocess
import time

from tests.agent.agentkit import job_env, journal_files, run_hook, stream_messages
from tests.helpers.pipeline import agent_cmd
from tests.helpers.pipeline import write_scripts as make_hooks

from collector.decode import Decoded, decode_message
from emitter import contract as c
from emitter import otlp, spool

BIG = 127 * 1024
#: nine job values the runner records (contract.JOB_ENV), each 127 KiB
BIG_ENV = {"SLURM_JOB_NODELIST": "n" * BIG, "SLURM_JOB_PARTITION": "p" * BIG,
           "SLURM_JOB_ACCOUNT": "a" * BIG, "SLURM_JOB_GPUS": "0," * (BIG // 2),
           "CUDA_VISIBLE_DEVICES": "1," * (BIG // 2), "SLURM_ARRAY_JOB_ID": "7" * BIG,
           "SLURM_ARRAY_TASK_ID": "8" * BIG, "SLURM_JOB_USER": "u" * BIG, "SLURM_JOB_NAME": "j" * BIG}


def _big_journal(tmp_path, n_scripts=3, output_kib=0):
    body = f"head -c {output_kib * 1024} /dev/zero | tr '\\0' x; exit 1" if output_kib else "exit 0"
    hooks = make_hooks(tmp_path / "hooks", {f"{i:02d}-s": (body if i == 0 else "exit 0")
                                            for i in range(n_scripts)})
    journal = tmp_path / "journal"
    env = job_env(42, **BIG_ENV)
    r = run_hook(hooks, journal, env=env)
    assert r.returncode in (0, 1), r.stderr
    (name,) = journal_files(journal)
    return journal, journal / name


def test_big_hook_is_split_into_messages_that_fit_and_verify(tmp_path):
    journal, path = _big_journal(tmp_path)
    jf = spool.read_file(str(path))
    assert not jf.damage and jf.size > c.MAX_MESSAGE_BYTES  # the record alone is over the limit
    started = jf.started
    assert len(started[c.R_DIGESTS]) >= 9 and c.record_hash(started) == started[c.R_HASH]

    req = otlp.fitted_trace(jf.entries)
    parts = otlp.split_requests(req)
    assert len(parts) >= 1
    sent = []
    for key, part in parts:
        data = part.SerializeToString()
        assert len(data) <= c.MAX_MESSAGE_BYTES - otlp.HEADER_ROOM
        assert key == otlp.records_key(part)
        sent += otlp.journal_lines(part)
    # every record travels, exactly once, and every one still verifies
    assert sorted(json.loads(x)[c.R_SEQ] for x in sent) == [r[c.R_SEQ] for _, r in jf.entries]
    for line in sent:
        rec = json.loads(line)
        assert c.record_hash(rec) == rec[c.R_HASH], rec[c.R_KIND]
        assert all(p == "cut" for _, p in c.digest_problems(rec))
    cut = json.loads(next(x for x in sent if c.K_HOOK_STARTED in x))
    assert cut[c.R_CUT] and all(v == BIG or v == BIG // 2 * 2 for v in cut[c.R_CUT].values())


def test_scripts_split_from_their_hook_keep_its_context(tmp_path):
    """Forced into several messages: the collector's rows
    of scripts travelling without their hook span still name its context."""
    journal, path = _big_journal(tmp_path, n_scripts=3, output_kib=0)
    jf = spool.read_file(str(path))
    req = otlp.fitted_trace(jf.entries)
    small = otlp.split_requests(req, max_bytes=otlp.HEADER_ROOM + 4096)  # force a split
    assert len(small) > 1
    rows = []
    for i, (key, part) in enumerate(small):
        dec = decode_message(part.SerializeToString(), c.subject(c.SIGNAL_SPANS, "c1", "n1"), i + 1,
                             time.time_ns())
        assert isinstance(dec, Decoded), dec
        rows += dec.rows.get("script_runs", [])
    assert rows and {r[5] for r in rows} == {"prolog_slurmd"}
    assert {r[6] for r in rows} == {"42"}


def test_agent_once_ships_the_big_hook_and_leaves_nothing(nats_server, tmp_path):
    journal, path = _big_journal(tmp_path, n_scripts=2, output_kib=200)
    r = subprocess.run(agent_cmd(nats_server.url, journal, "--once"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert journal_files(journal) == []
    msgs = stream_messages(nats_server.url)
    assert msgs and all(len(m.data) <= c.MAX_MESSAGE_BYTES for m in msgs)
    recs = [json.loads(x) for m in msgs for x in otlp.journal_lines(otlp.decode_trace(m.data))]
    assert sorted(r[c.R_SEQ] for r in recs) == list(range(1, len(recs) + 1))
    assert all(c.record_hash(r) == r[c.R_HASH] for r in recs)
    assert any(r.get(c.R_CUT) for r in recs)


def test_agent_once_exits_1_and_records_why_when_a_file_cannot_ship(nats_server, tmp_path):
    """A file that cannot fit even cut (here: a server max_payload far below
    ours) stays, is explained by a journal_error, and --once says so (1)."""
    from tests.helpers.servers import NatsServer

    srv = NatsServer(store_dir=tmp_path / "tiny", config="max_payload: 2048\n").start()
    try:
        journal, path = _big_journal(tmp_path, n_scripts=1)
        r = subprocess.run(agent_cmd(srv.url, journal, "--once"), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1, r.stderr
        assert "stayed behind" in r.stderr or "not shipped" in r.stderr
        names = journal_files(journal)
        assert path.name in names  # kept, never deleted
        errs = [rec for n in names for _, rec in spool.read_file(str(journal / n)).entries
                if rec.get(c.R_KIND) == c.K_JOURNAL_ERROR]
        assert errs and path.name in errs[0][c.R_PATH] and "too large" in errs[0][c.R_REASON]
    finally:
        srv.stop()
