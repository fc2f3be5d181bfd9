"""Pure tests of the encoder: journal records -> OTLP spans and metrics."""

import json

from emitter import contract as c
from emitter import otlp

HOOK = "ab12cd34ef567890"


def rec(kind, seq, ts, **kw):
    r = {c.R_VERSION: 1, c.R_KIND: kind, c.R_SEQ: seq, c.R_PREV: "0" * 64, c.R_TS: ts, c.R_NODE: "n1",
         c.R_CLUSTER: "c1", c.R_HOOK_ID: HOOK, c.R_PID: 4242}
    r.update(kw)
    r[c.R_HASH] = c.record_hash(r)
    return r


def hook_records(status=1, end=True, job_id="77", restart="0"):
    job = {k: None for k in c.JOB_ENV}
    job.update(job_id=job_id, restart_count=restart, user="alice", gpus="0,1")
    rs = [
        rec(c.K_SPOOL_EVICTED, 1, 900, files=2, bytes=100, seqs=[1, 9]),
        rec(c.K_HOOK_STARTED, 2, 1000, context="prolog_slurmd", layout="slurm", dirs=["/p"], timeout_s=0,
            job=job, warnings=[]),
        rec(c.K_SCRIPT_STARTED, 3, 1100, index=0, path="/p/b.sh", sha256="a" * 64, size=3, mode=0o100755,
            uid=0, mtime=5),
        rec(c.K_SCRIPT_ENDED, 4, 1200, index=0, path="/p/b.sh", exit_code=0, signal=None, timed_out=False,
            refused=None, duration_ns=100, output=None, output_truncated=False),
        rec(c.K_SCRIPT_SKIPPED, 5, 1210, index=None, path="/p/README", reason="name filter"),
        rec(c.K_SCRIPT_STARTED, 6, 1300, index=1, path="/p/a.sh", sha256="b" * 64, size=3, mode=0o100755,
            uid=0, mtime=5),
    ]
    if end:
        rs += [
            rec(c.K_SCRIPT_ENDED, 7, 1400, index=1, path="/p/a.sh", exit_code=137, signal=9, timed_out=True,
                refused=None, duration_ns=100, output="x" * 50 + "boom", output_truncated=False),
            rec(c.K_HOOK_ENDED, 8, 1500, status=status, n_scripts=2, failed_index=1, duration_ns=500,
                warnings=[]),
        ]
    return rs


def spans(req):
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_hook_and_script_spans_parentage_times_and_attributes():
    recs = hook_records()
    req = otlp.trace_request(recs)
    res = otlp.attributes_dict(req.resource_spans[0].resource.attributes)
    assert res[c.A_SERVICE_NAME] == "hookscope" and res[c.A_HOST_NAME] == "n1"
    assert res[c.A_CLUSTER] == "c1" and res[c.A_SCHEMA_VERSION] == c.SCHEMA_VERSION
    assert c.A_SERVICE_VERSION in res
    hook, s0, s1 = spans(req)
    assert hook.span_id.hex() == HOOK and not hook.parent_span_id
    assert hook.trace_id.hex() == c.trace_id("c1", "77", 0)
    assert (hook.start_time_unix_nano, hook.end_time_unix_nano) == (1000, 1500)
    for i, s in enumerate((s0, s1)):
        assert s.parent_span_id.hex() == HOOK and s.trace_id == hook.trace_id
        assert s.span_id.hex() == c.script_span_id(HOOK, i)
    assert (s0.start_time_unix_nano, s0.end_time_unix_nano) == (1100, 1200)
    ha = otlp.attributes_dict(hook.attributes)
    assert ha[c.A_SPAN_TYPE] == c.SPAN_HOOK and ha[c.A_CONTEXT] == "prolog_slurmd"
    assert ha[c.A_LAYOUT] == "slurm" and ha[c.A_HOOK_STATUS] == 1 and ha[c.A_JOB_ID] == "77"
    assert ha[c.A_JOB_USER] == "alice" and ha[c.A_JOB_GPUS] == "0,1"
    assert c.A_JOB_ACCOUNT not in ha  # None values are left out
    assert hook.status.code == 2  # ERROR
    a1 = otlp.attributes_dict(s1.attributes)
    assert a1[c.A_EXE_PATH] == "/p/a.sh" and a1[c.A_EXIT_CODE] == 137 and a1[c.A_SIGNAL] == 9
    assert a1[c.A_TIMED_OUT] is True and a1[c.A_SCRIPT_SHA256] == "b" * 64
    names = [e.name for e in s1.events]
    assert names == [c.E_TIMEOUT, c.E_SIGNAL, c.E_OUTPUT]
    out = otlp.attributes_dict(s1.events[2].attributes)
    assert out[c.EA_OUTPUT_TEXT].endswith("boom")
    assert [e.name for e in hook.events] == [c.E_EVICTED]
    assert s0.status.code == 0 and not s0.events


def test_every_record_lands_in_exactly_one_span():
    recs = hook_records()
    req = otlp.trace_request(recs)
    lines = otlp.journal_lines(req)
    assert sorted(lines) == sorted(c.canonical_json(r) for r in recs)
    # and raw lines are carried verbatim (not re-serialised)
    raw = [(" " + c.canonical_json(r), r) for r in recs]
    assert sorted(otlp.journal_lines(otlp.trace_request(raw))) == sorted(x for x, _ in raw)


def test_job_less_hook_gets_its_own_trace():
    req = otlp.trace_request(hook_records(job_id=None))
    assert spans(req)[0].trace_id.hex() == c.trace_id("c1", "hook:" + HOOK, 0)
    req = otlp.trace_request(hook_records(restart="2"))
    assert spans(req)[0].trace_id.hex() == c.trace_id("c1", "77", 2)


def test_abandoned_file_open_script_is_error_span_with_killed_event():
    recs = hook_records(end=False)
    req = otlp.trace_request(recs, abandoned_ts=5000)
    hook, s0, s1 = spans(req)
    assert s1.status.code == 2 and s1.end_time_unix_nano == 5000
    assert [e.name for e in s1.events] == [c.E_KILLED]
    a = otlp.attributes_dict(s1.attributes)
    assert a[c.A_KILLED] is True and c.A_EXIT_CODE not in a
    assert hook.status.code == 2 and hook.end_time_unix_nano == 5000
    assert [e.name for e in hook.events] == [c.E_EVICTED, c.E_KILLED]
    assert otlp.attributes_dict(hook.attributes)[c.A_KILLED] is True
    assert s0.status.code == 0


def test_standalone_records_become_node_event_and_journal_spans():
    ne = rec(c.K_NODE_EVENT, 10, 2000, state="DRAIN", reason="Prolog error", source="scontrol")
    je = rec(c.K_JOURNAL_ERROR, 11, 2001, path="/j/x.jsonl", reason="torn last line")
    req = otlp.trace_request([ne, je])
    a, b = spans(req)
    assert otlp.attributes_dict(a.attributes)[c.A_SPAN_TYPE] == c.SPAN_NODE_EVENT
    bt = otlp.attributes_dict(b.attributes)
    assert bt[c.A_SPAN_TYPE] == c.SPAN_JOURNAL and b.status.code == 2
    assert [e.name for e in b.events] == [c.E_JOURNAL_DAMAGED]
    assert sorted(otlp.journal_lines(req)) == sorted(c.canonical_json(r) for r in (ne, je))


def test_oversized_outputs_are_cut_to_fit_and_marked():
    recs = hook_records()
    big = dict(recs[-2])
    big[c.R_OUTPUT] = "y" * 600_000
    recs[-2] = big
    recs.insert(3, dict(big, seq=99, index=0))  # two huge outputs
    data = otlp.encode_trace(recs, max_bytes=300_000)
    assert len(data) <= 300_000
    req = otlp.decode_trace(data)
    cut = [json.loads(x) for x in otlp.journal_lines(req) if '"output":"y' in x]
    assert cut and all(r[c.R_OUTPUT_TRUNCATED] for r in cut)
    assert len(otlp.journal_lines(req)) == len(recs)  # nothing dropped


def _without_sdk_flags(req):
    """``req`` less what the SDK's encoder adds to every span: ``flags``
    (SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE) and an empty ``status`` when unset."""
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                sp.ClearField("flags")
                if not sp.status.code and not sp.status.message:
                    sp.ClearField("status")
    return req


def test_sdk_encoder_carries_the_same_spans():
    """The same hook as ReadableSpans, encoded by the SDK's own encoder (the
    NatsSpanExporter path), gives the request the agent builds and publishes."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    for kw in ({}, {"abandoned_ts": 7000}):
        recs = hook_records(end=not kw)
        req = otlp.trace_request(recs, gpu_snapshots=[{"index": 0, "uuid": "GPU-1", "model": "H100",
                                                       "metrics": {c.M_GPU_POWER: 500.5}, "ts": 1001}], **kw)
        again = encode_spans(otlp.sdk_spans(req))
        assert _without_sdk_flags(again) == req
        assert [k for k, _ in otlp.split_requests(again)] == [k for k, _ in otlp.split_requests(req)]
    assert otlp.message_key(req) == HOOK and otlp.resource_of(req) == ("c1", "n1")


class _Recorder:
    """publish_many/publish like JetStreamPublisher, acking everything."""

    def __init__(self):
        self.msgs = []

    def publish_many(self, items, timeout=None):
        from types import SimpleNamespace

        self.msgs += [(s, d, m) for s, d, m, _ in items]
        return [SimpleNamespace(duplicate=False, seq=i) for i, _ in enumerate(items)]

    def publish(self, subject, data, msg_id, content_type, timeout=None):
        return self.publish_many([(subject, data, msg_id, content_type)])[0]

    def close(self):
        pass


def _messages(req):
    cluster, node = otlp.resource_of(req)
    return [(c.subject(c.SIGNAL_SPANS, cluster, node), part.SerializeToString(),
             c.message_id(cluster, node, c.SIGNAL_SPANS, key)) for key, part in otlp.split_requests(req)]


def test_agent_publishes_the_request_it_builds(tmp_path):
    """One encoding: the agent's messages are the split of the request built
    from each journal file (plus the spool owner), byte for byte."""
    from emitter import spool
    from emitter.agent import Agent, AgentSettings
    from tests.agent.agentkit import write_hooks_fast

    write_hooks_fast(tmp_path / "j", 3, scripts=3)
    want = []
    for jf in spool.scan(str(tmp_path / "j")):
        req = otlp.fitted_trace(jf.entries)
        for rs in req.resource_spans:
            otlp._attrs(rs.resource.attributes, {c.A_ATTESTED_UID: 0})
        want += _messages(req)
    s = AgentSettings.resolve({}, env={}, journal=str(tmp_path / "j"), node="n1", cluster="c1", gpu="none")
    rec = _Recorder()
    assert Agent(s, publisher=rec, log=lambda m: None).run(once=True) == 0
    assert [m for m in rec.msgs if m[0].startswith("hookscope.spans.")] == want and len(want) == 3


def test_exporters_publish_exactly_the_encoded_requests():
    """TraceExporter publishes the requests as given; NatsSpanExporter
    publishes what the SDK's encode_spans gives for its spans, split the same
    way.  A message over max_bytes sends nothing and says why."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from emitter.exporter import NatsSpanExporter, TraceExporter

    hook = otlp.trace_request(hook_records())
    standalone = otlp.trace_request([rec(c.K_NODE_EVENT, 20, 2000, state="DRAIN", reason="x", source="scontrol"),
                                     rec(c.K_JOURNAL_ERROR, 21, 2100, path="/j/x", reason="bad")])
    rec_pub = _Recorder()
    tx = TraceExporter(rec_pub)
    assert tx.export([hook, standalone]) and tx.last_error is None
    assert rec_pub.msgs == _messages(hook) + _messages(standalone) and len(rec_pub.msgs) == 3

    spans = otlp.sdk_spans(otlp.trace_request(hook_records(job_id="78")))
    rec_pub.msgs = []
    ex = NatsSpanExporter(rec_pub)
    assert ex.export(spans).name == "SUCCESS"
    assert rec_pub.msgs == _messages(encode_spans(spans)) and len(rec_pub.msgs) == 1

    rec_pub.msgs = []
    small = TraceExporter(rec_pub, max_bytes=100)
    assert not small.export([hook]) and rec_pub.msgs == []
    assert "over the 100-byte limit" in small.last_error and small.last_error.startswith("message ")


def test_metrics_round_trip():
    samples = [{"index": i, "uuid": f"GPU-{i}", "model": "H100", "vendor": "nvidia", "source": "replay",
                "job_id": "77" if i == 0 else None,
                "metrics": {c.M_GPU_UTILIZATION: 0.5, c.M_GPU_MEMORY_USAGE: 1 << 33, c.M_GPU_XID: 0}}
               for i in range(2)]
    req = otlp.decode_metrics(otlp.encode_metrics(samples, node="n1", cluster="c1", ts=123))
    names = [m.name for m in req.resource_metrics[0].scope_metrics[0].metrics]
    assert names == [c.M_GPU_UTILIZATION, c.M_GPU_MEMORY_USAGE, c.M_GPU_XID]
    rows = otlp.samples_from_metrics(req)
    assert len(rows) == 6
    r0 = [r for r in rows if r["metric"] == c.M_GPU_MEMORY_USAGE and r[c.A_GPU_INDEX] == 0][0]
    assert r0["value"] == 1 << 33 and r0[c.A_JOB_ID] == "77" and r0["ts"] == 123 and r0["unit"] == "By"
    r1 = [r for r in rows if r["metric"] == c.M_GPU_UTILIZATION and r[c.A_GPU_INDEX] == 1][0]
    assert c.A_JOB_ID not in r1 and r1["value"] == 0.5
