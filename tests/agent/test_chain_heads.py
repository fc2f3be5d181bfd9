"""Chain heads from the agent (emitter/chainheads.py): after files are acked
the agent knows each chain's last shipped record; it publishes those heads,
signed with the node's NKey when it has one, periodically when one moved and
when it stops.  A recording publisher stands in for JetStream here (the real
server, credentials and collector: tests/hardening/test_identity.py)."""

from __future__ import annotations

import json
import os
import threading
from types import SimpleNamespace

import nkeys

from tests.agent.agentkit import write_hooks_fast
from tests.helpers import wait_for

from emitter import chainheads
from emitter import contract as c
from emitter.agent import Agent, AgentSettings


class Recorder:
    """publish/publish_many like JetStreamPublisher, acking everything."""

    def __init__(self):
        self.lock = threading.Lock()
        self.msgs = []

    def publish_many(self, items, timeout=None):
        with self.lock:
            self.msgs += [(s, d, m) for s, d, m, _ in items]
        return [SimpleNamespace(duplicate=False, seq=i) for i, _ in enumerate(items)]

    def publish(self, subject, data, msg_id, content_type, timeout=None):
        with self.lock:
            self.msgs.append((subject, data, msg_id))
        return SimpleNamespace(duplicate=False, seq=0)

    def heads(self):
        with self.lock:
            return [h for s, d, _ in self.msgs if s.startswith("hookscope.heads.")
                    for h in json.loads(d)["heads"]]

    def close(self):
        pass


def _last(journal):
    """The journal's last record (seq, hash, chain) from its chain head file,
    not from the journal files: a live agent may already have shipped and
    deleted those."""
    seq, hash_, chain = (journal / c.CHAIN_HEAD_FILE).read_text().split()
    return {c.R_SEQ: int(seq), c.R_HASH: hash_, c.R_CHAIN: chain}


def _agent(tmp_path, **kw):
    s = AgentSettings.resolve({}, env={}, journal=str(tmp_path / "j"), node="n1", cluster="c1", gpu="none",
                              **kw)
    rec = Recorder()
    return Agent(s, publisher=rec, log=lambda m: None), rec


def test_once_publishes_the_shipped_head_unsigned_without_a_key(tmp_path):
    write_hooks_fast(tmp_path / "j", 3)
    last = _last(tmp_path / "j")
    a, rec = _agent(tmp_path)
    assert a.run(once=True) == 0
    (head,) = rec.heads()
    assert (head["chain"], head["seq"], head["hash"]) == (last[c.R_CHAIN], last[c.R_SEQ], last[c.R_HASH])
    assert head["sig"] is None and head["key"] is None and head["ts"] % 1000 == 0
    subj, data, mid = next(m for m in rec.msgs if m[0].startswith("hookscope.heads."))
    assert subj == "hookscope.heads.c1.n1"
    import hashlib
    assert mid == c.message_id("c1", "n1", "heads", hashlib.sha256(data).hexdigest())


def test_heads_are_signed_periodically_and_at_stop(tmp_path):
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    (tmp_path / "n1.nk").write_text(seed + "\n")
    os.chmod(tmp_path / "n1.nk", 0o600)
    write_hooks_fast(tmp_path / "j", 2)
    a, rec = _agent(tmp_path, nkey=str(tmp_path / "n1.nk"), head_interval_s=0.05, poll_interval_s=0.05)
    t = threading.Thread(target=a.run)
    t.start()
    try:
        first = _last(tmp_path / "j")
        wait_for(lambda: any(h["seq"] == first[c.R_SEQ] for h in rec.heads()), 30, what="first head")
        write_hooks_fast(tmp_path / "j", 2, job_base=2000)
        second = _last(tmp_path / "j")
        wait_for(lambda: any(h["seq"] == second[c.R_SEQ] for h in rec.heads()), 30, what="moved head")
        n_before_stop = len(rec.heads())
    finally:
        a.stop()
        t.join(30)
    heads = rec.heads()
    assert len(heads) > n_before_stop  # the last word at stop: every head, again
    key = nkeys.from_seed(seed.encode()).public_key.decode()
    for h in heads:
        assert h["key"] == key and chainheads.verify(h)
    assert heads[-1]["seq"] == second[c.R_SEQ] and heads[-1]["hash"] == second[c.R_HASH]
