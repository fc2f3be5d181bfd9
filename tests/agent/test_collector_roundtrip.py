"""What the agent encodes, the collector's decoder loads (no dead letters)."""

import time

from tests.agent.test_otlp import hook_records, rec

from collector import decode
from emitter import contract as c
from emitter import otlp


def _now_records(records, now):
    out = []
    for r in records:
        r = dict(r, ts=now - 10**9 + r[c.R_TS])
        r.pop(c.R_HASH)
        r[c.R_HASH] = c.record_hash(r)
        out.append(r)
    return out


def test_every_message_kind_decodes():
    now = time.time_ns()
    snap = [{"index": 0, "uuid": "GPU-0", "model": "H100", "vendor": "nvidia", "source": "replay",
             "metrics": {c.M_GPU_POWER: 512.5}, "ts": now}]
    spans = {
        "complete": otlp.encode_trace(_now_records(hook_records(), now), gpu_snapshots=snap),
        "abandoned": otlp.encode_trace(_now_records(hook_records(end=False), now), abandoned_ts=now),
        "standalone": otlp.encode_trace(_now_records([
            rec(c.K_NODE_EVENT, 10, 2000, state="DRAIN", reason="Prolog error", source="scontrol"),
            rec(c.K_JOURNAL_ERROR, 11, 2001, path="/j/x.jsonl", reason="torn last line")], now)),
    }
    for name, data in spans.items():
        d = decode.decode_message(data, "hookscope.spans.c1.n1", 1, now, str(c.SCHEMA_VERSION))
        assert isinstance(d, decode.Decoded), (name, d)
    d = decode.decode_message(spans["abandoned"], "hookscope.spans.c1.n1", 1, now)
    assert d.rows["hook_runs"][0][0] == "ab12cd34ef567890" and True in d.rows["hook_runs"][0]
    m = otlp.encode_metrics([dict(snap[0], job_id="7")], node="n1", cluster="c1", ts=now)
    d = decode.decode_message(m, "hookscope.metrics.c1.n1", 2, now)
    assert isinstance(d, decode.Decoded) and len(d.rows["gpu_samples"]) == 1
