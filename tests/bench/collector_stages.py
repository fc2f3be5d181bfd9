"""Parts of tests/bench/bench_collector.py: fake fetched messages, and the
per-stage profile (us per span of each step of the collector, one after the
other on one thread, on the same messages)."""

from __future__ import annotations

import os
import time

from collector.store import Store
from emitter import contract as C

SPANS_PER_MSG = 9  # hook span + 8 script spans


class _FakeMsg:
    def __init__(self, subj, data, seq, ts):
        self.subject = subj
        self.data = data
        self.headers = {C.HDR_SCHEMA: "1"}
        self.reply = f"$JS.ACK.{C.STREAM_NAME}.x.1.{seq}.{seq}.{ts}.0"


def _fake_msgs(msgs):
    now = time.time_ns()
    out = []
    for i, (s, mid, p) in enumerate(msgs):
        m = _FakeMsg(s, p, i + 1, now)
        m.headers = {C.HDR_SCHEMA: "1", C.HDR_MSG_ID: mid}
        out.append(m)
    return out


def stage_profile(msgs, tmp, batch):
    """us per span of each stage, run one after the other on one thread, same
    messages (the collector runs archive and commit in threads beside decode)."""
    from collector.archive import Archive
    from collector.columns import Batch
    from collector.consumer import parse_reply
    from collector.decode import DeadLetter, decode_message, subject_parts
    from collector.identity import check_decoded, check_msg_id_decoded

    fake = _fake_msgs(msgs)
    spans = len(fake) * SPANS_PER_MSG
    secs = dict.fromkeys(("headers+reply", "decode", "identity (rows, Msg-Id)", "Arrow conversion",
                          "Parquet write+fsync", "DuckDB commit"), 0.0)
    archive = Archive(os.path.join(tmp, "stages-archive"), consumer="stages", fsync=True)
    store = Store(os.path.join(tmp, "stages.duckdb"), consumer="stages")
    clock = time.perf_counter

    def timed(stage, fn, *args):
        t0 = clock()
        out = fn(*args)
        secs[stage] += clock() - t0
        return out

    # warm-up, untimed: the first Arrow conversion and decode pay one-time set-up
    warm = Batch("stages", True)
    for m in fake[:64]:
        r = parse_reply(m.reply)
        warm.add(decode_message(m.data, m.subject, r[0], r[1]), r[0], m.subject, r[1], m.data)
    warm.arrow()
    for i in range(0, len(fake), batch):
        chunk = fake[i:i + batch]
        meta = timed("headers+reply", lambda: [(parse_reply(m.reply), m.headers or {}) for m in chunk])
        decs = timed("decode", lambda: [decode_message(m.data, m.subject, r[0], r[1], h.get(C.HDR_SCHEMA))
                                        for m, (r, h) in zip(chunk, meta)])
        ok = [(m, h, d) for m, (r, h), d in zip(chunk, meta, decs) if type(d) is not DeadLetter]
        # decode ran the rows check already: timed again here to report it apart
        t0 = clock()
        assert not any([check_decoded(m.subject, d) for m, h, d in ok])
        took = clock() - t0
        secs["decode"] -= took
        secs["identity (rows, Msg-Id)"] += took
        timed("identity (rows, Msg-Id)",
              lambda: [check_msg_id_decoded(d, h.get(C.HDR_MSG_ID), m.subject, m.data) for m, h, d in ok])

        def to_arrow():
            b = Batch("stages", True)
            for m, (r, h), d in zip(chunk, meta, decs):
                b.add(d, r[0], m.subject, r[1], m.data, h.get(C.HDR_MSG_ID), subject_parts(m.subject)[1])
            return b, b.arrow()
        b, (parts, tables) = timed("Arrow conversion", to_arrow)
        timed("Parquet write+fsync", archive.write, parts, b.first_seq, b.last_seq)
        timed("DuckDB commit", store.commit, tables, b.last_seq)
    store.close(snapshot=False)
    archive.close()
    return {k: v / spans * 1e6 for k, v in secs.items()}
