"""/metrics says when something stayed behind on a node: the agent records a
``journal_error`` for a file it could not ship (damaged, untrusted, too large),
and the collector counts every such record it receives."""

from __future__ import annotations

import time
from types import SimpleNamespace

from tests.collector.gen import Node, hook_message

from collector.consumer import build_batch
from collector.metrics import Metrics
from emitter import contract as C
from emitter import otlp


def _msg(subject, data, seq, mid=None):
    reply = f"$JS.ACK.{C.STREAM_NAME}.c.1.{seq}.{seq}.{time.time_ns()}.0"
    return SimpleNamespace(subject=subject, data=data, reply=reply,
                           headers={C.HDR_MSG_ID: mid} if mid else {})


def test_journal_errors_are_counted_in_metrics():
    node = Node("n1")
    err = node.record(C.K_JOURNAL_ERROR, "ab" * 8, time.time_ns() - 10**9,
                      path="/var/spool/hookscope/journal/x.jsonl",
                      reason="journal file x.jsonl (3000000 bytes) is too large to ship")
    subj = C.subject(C.SIGNAL_SPANS, node.cluster, node.node)
    msgs = [_msg(subj, otlp.encode_trace([err]), 1), _msg(subj, hook_message(node)[2], 2)]
    batch, _ = build_batch(msgs, "t", False, C.MAX_MESSAGE_BYTES)
    m = Metrics()
    m.batch_done(batch, 0.01)
    assert not batch.dead
    assert m.snapshot()["journal_errors"] == 1
    assert "hookscope_collector_journal_errors_total 1" in m.render()
