"""The pure decoder: round trips through the agent's encoder, every dead-letter
class, schema upgrades, and a 10,000-case property-based fuzz."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import decode as D
from collector.columns import Batch, check_rows, to_arrow
from emitter import contract as C
from emitter import otlp
from tests.collector.gen import Node, gpu_message, hook_message

NOW = time.time_ns()
SPANS = C.subject(C.SIGNAL_SPANS, "gpu1", "node001")
METRICS = C.subject(C.SIGNAL_METRICS, "gpu1", "node001")


def dec(payload, subject=SPANS, **kw):
    return D.decode_message(payload, subject, 7, NOW, **kw)


def test_hook_round_trip_through_the_agent_encoder():
    node = Node()
    subj, _, payload, recs = hook_message(node, fail_index=2)
    out = dec(payload, subj)
    assert isinstance(out, D.Decoded), out
    assert out.n_spans == 1 + 3  # hook + scripts 0..2 (2 failed, the rest did not run)
    (hook,) = out.rows["hook_runs"]
    assert hook[0] == recs[0][C.R_HOOK_ID]
    assert hook[4] == "prolog_slurmd" and hook[6] == "1001" and hook[20] == 1  # context, job, status
    assert hook[22] == 2 and hook[23] is False  # failed_index, runner_killed
    assert hook[1] == C.trace_id("gpu1", "1001", 0)
    scripts = sorted(out.rows["script_runs"], key=lambda r: r[8])
    assert [r[8] for r in scripts] == [0, 1, 2]
    assert scripts[2][18] == 1 and scripts[2][23] == "boom: gpu 3 fell off the bus"
    assert scripts[0][0] == C.script_span_id(hook[0], 0)
    # every record reaches the journal table exactly once, verbatim
    assert sorted(r[3] for r in out.rows["journal"]) == [r[C.R_SEQ] for r in recs]
    assert {r[2] for r in out.rows["journal"]} == {recs[0][C.R_CHAIN]}  # the chain column
    assert {r[8] for r in out.rows["journal"]} == {C.canonical_json(r) for r in recs}
    (ev,) = out.rows["span_events"]
    assert ev[4] == C.E_OUTPUT and json.loads(ev[5])[C.EA_OUTPUT_TEXT].startswith("boom")
    for t, rows in out.rows.items():
        assert to_arrow(t, rows).num_rows == len(rows)


def test_abandoned_hook_marks_runner_killed():
    node = Node()
    _, _, payload, recs = hook_message(node, killed_at=1)
    out = dec(payload)
    (hook,) = out.rows["hook_runs"]
    assert hook[18] is None and hook[23] is True  # end_ts, runner_killed
    killed = [r for r in out.rows["script_runs"] if r[8] == 1][0]
    assert killed[18] is None and killed[22] is True  # exit_code, runner_killed
    assert any(e[4] == C.E_KILLED for e in out.rows["span_events"])


def test_node_event_standalone_span():
    node = Node()
    rec = node.node_event()
    out = dec(otlp.encode_trace([rec]))
    assert out.rows["node_events"] == [(rec[C.R_HASH], "gpu1", "node001", rec[C.R_TS], "drain",
                                        "Prolog error", "scontrol")]
    assert len(out.rows["journal"]) == 1


def test_gpu_metrics_pivot_into_one_row_per_gpu():
    node = Node()
    subj, _, payload, samples = gpu_message(node, n_gpus=8)
    out = dec(payload, subj)
    rows = sorted(out.rows["gpu_samples"], key=lambda r: r[3])
    assert len(rows) == 8
    r3 = rows[3]
    assert r3[:2] == ("gpu1", "node001") and r3[3] == 3 and r3[4] == "GPU-00000003"
    assert r3[6] == "1001" and r3[7] == 0.5 and r3[8] == 10 * 2**30 and r3[15] == 79  # job, util, mem, xid
    assert to_arrow("gpu_samples", rows).num_rows == 8


def test_bad_hash_is_stored_not_dead_lettered():
    node = Node()
    _, recs = node.hook()
    recs[1] = dict(recs[1], exit_code=0, path="/tampered")  # hash no longer matches
    out = dec(otlp.encode_trace(recs))
    assert isinstance(out, D.Decoded)
    assert any('"/tampered"' in r[8] for r in out.rows["journal"])


def _spans_with(mutate):
    node = Node()
    _, recs = node.hook(n_scripts=2)
    req = otlp.trace_request(recs)
    mutate(req, recs)
    return req.SerializeToString()


def _set_records(req, idx, text):
    span = req.resource_spans[0].scope_spans[0].spans[idx]
    for kv in span.attributes:
        if kv.key == C.A_RECORDS:
            kv.value.string_value = text


@pytest.mark.parametrize("payload,subject,reason", [
    (b"\x0a\x05\xff\xff", SPANS, D.DL_MALFORMED),
    (b"", SPANS, D.DL_NOT_OURS),
    (ExportTraceServiceRequest().SerializeToString(), SPANS, D.DL_NOT_OURS),
    (b"ok", "hookscope.other.x.y", D.DL_BAD_SUBJECT),
])
def test_dead_letter_classes_simple(payload, subject, reason):
    out = dec(payload, subject)
    assert isinstance(out, D.DeadLetter) and out.reason == reason, out


def test_not_ours_foreign_service():
    def m(req, recs):
        for kv in req.resource_spans[0].resource.attributes:
            if kv.key == C.A_SERVICE_NAME:
                kv.value.string_value = "checkout-service"
    out = dec(_spans_with(m))
    assert out.reason == D.DL_NOT_OURS and "service.name" in out.detail


def test_missing_records_attribute():
    def m(req, recs):
        span = req.resource_spans[0].scope_spans[0].spans[1]
        keep = [kv for kv in span.attributes if kv.key != C.A_RECORDS]
        del span.attributes[:]
        span.attributes.extend(keep)
    out = dec(_spans_with(m))
    assert out.reason == D.DL_MISSING and C.A_RECORDS in out.detail


def test_missing_record_field():
    def m(req, recs):
        r = dict(recs[1])
        del r[C.R_SEQ]
        _set_records(req, 1, C.canonical_json(r) + "\n" + C.canonical_json(recs[2]))
    assert dec(_spans_with(m)).reason == D.DL_MISSING


def test_oversized():
    out = dec(b"x" * 2000, max_bytes=1000)
    assert out.reason == D.DL_OVERSIZED and "2000 bytes" in out.detail


@pytest.mark.parametrize("ts", [5, 10**18 * 9, NOW + 2 * 86400 * 10**9])
def test_impossible_timestamps(ts):
    node = Node()
    _, recs = node.hook(ts=ts, n_scripts=1)
    out = dec(otlp.encode_trace(recs))
    assert out.reason == D.DL_BAD_TIMESTAMP, out


def test_schema_too_new_in_header_and_in_records():
    node = Node()
    _, _, payload, recs = hook_message(node)
    assert dec(payload, schema_header=str(C.SCHEMA_VERSION + 1)).reason == D.DL_TOO_NEW
    newer = [dict(r, v=C.SCHEMA_VERSION + 1) for r in recs]
    assert dec(otlp.encode_trace(newer)).reason == D.DL_TOO_NEW


def test_inconsistent_span_id():
    def m(req, recs):
        req.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x01" * 8
    assert dec(_spans_with(m)).reason == D.DL_BAD_IDS


def test_wrong_field_type_is_isolated_by_arrow_check():
    node = Node()
    _, recs = node.hook(n_scripts=1)
    recs[2] = dict(recs[2], exit_code="zero")
    out = dec(otlp.encode_trace(recs))
    assert isinstance(out, D.Decoded)
    why = check_rows(out)
    assert why and "script_runs" in why


def test_upgrade_v0_record_shape():
    """A made-up v0 shape (hook_id, ts_us) is upgraded on read; the stored line stays verbatim."""
    node = Node()
    _, recs = node.hook(n_scripts=1)
    old = []
    for r in recs:
        r0 = {k: v for k, v in r.items() if k not in (C.R_HOOK_ID, C.R_TS, C.R_HASH)}
        r0.update(v=0, hook_id=r[C.R_HOOK_ID], ts_us=r[C.R_TS] // 1000)
        r0[C.R_HASH] = C.record_hash(r0)
        old.append(r0)
    assert D.upgrade_record(old[0])[C.R_HOOK_ID] == recs[0][C.R_HOOK_ID]
    hook_id = recs[0][C.R_HOOK_ID]
    req = otlp.trace_request(recs)  # spans/ids from the v1 view, records replaced by the v0 lines
    _set_records(req, 0, "\n".join(C.canonical_json(r) for r in (old[0], old[3])))
    _set_records(req, 1, "\n".join(C.canonical_json(r) for r in (old[1], old[2])))
    out = dec(req.SerializeToString())
    assert isinstance(out, D.Decoded), out
    (hook,) = out.rows["hook_runs"]
    assert hook[0] == hook_id and hook[17] == (recs[0][C.R_TS] // 1000) * 1000 and hook[25] == 0
    assert {r[8] for r in out.rows["journal"]} == {C.canonical_json(r) for r in old}


# ---------------------------------------------------------------- fuzz
_VALID = [hook_message(Node(f"n{i}"), fail_index=i % 3, killed_at=1 if i == 2 else None)[2] for i in range(4)]
_VALID.append(gpu_message(Node("g1"))[2])


def _mutations():
    raw = st.binary(max_size=600)
    flip = st.tuples(st.sampled_from(range(len(_VALID))), st.integers(0, 10**6), st.integers(0, 255)).map(
        lambda t: _flip(_VALID[t[0]], t[1], t[2]))
    cut = st.tuples(st.sampled_from(range(len(_VALID))), st.integers(0, 10**6)).map(
        lambda t: _VALID[t[0]][: t[1] % (len(_VALID[t[0]]) + 1)])
    splice = st.tuples(st.sampled_from(range(len(_VALID))), st.integers(0, 10**6), st.binary(max_size=40)).map(
        lambda t: _splice(_VALID[t[0]], t[1], t[2]))
    return st.one_of(raw, flip, cut, splice)


def _flip(b, pos, val):
    pos %= len(b)
    return b[:pos] + bytes([val]) + b[pos + 1:]


def _splice(b, pos, ins):
    pos %= len(b) + 1
    return b[:pos] + ins + b[pos:]


@settings(max_examples=10_000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=_mutations(), subject=st.sampled_from([SPANS, METRICS, "hookscope.spans.x", "junk"]))
def test_fuzz_decoder_never_raises_and_output_is_storable(payload, subject):
    out = D.decode_message(payload, subject, 1, NOW)
    assert isinstance(out, (D.Decoded, D.DeadLetter))
    if isinstance(out, D.DeadLetter):
        assert out.reason in D.DL_REASONS and isinstance(out.detail, str)
        return
    # a decoded message either converts to Arrow or is isolated by check_rows
    b = Batch("fuzz")
    b.add(out, 1, subject, NOW, payload)
    if check_rows(out) is None:
        parts, tables = b.arrow()
        assert all(tb.num_rows >= 0 for tb in tables.values())


# ---------------------------------------------------------------- runner killed
def _span_by_id(req, sid):
    for sp in req.resource_spans[0].scope_spans[0].spans:
        if sp.span_id.hex() == sid:
            return sp
    raise AssertionError(sid)


def _mark_killed(span, event=True):
    kv = span.attributes.add()
    kv.key = C.A_KILLED
    kv.value.bool_value = True
    if not event:
        keep = [ev for ev in span.events if ev.name != C.E_KILLED]
        del span.events[:]
        span.events.extend(keep)


def test_runner_killed_attribute_without_the_event():
    """The agent marks the killed runner's open script span AND its hook span
    with the A_KILLED attribute; the E_KILLED event may be on one of them only.
    Both rows say runner_killed, whichever span carries the event."""
    node = Node()
    hook_id, recs = node.hook(killed_at=1, n_scripts=3)
    req = otlp.trace_request(recs, abandoned_ts=recs[-1][C.R_TS] + 10**9)
    for sp in req.resource_spans[0].scope_spans[0].spans:  # no E_KILLED anywhere
        keep = [ev for ev in sp.events if ev.name != C.E_KILLED]
        del sp.events[:]
        sp.events.extend(keep)
    out = dec(req.SerializeToString())
    (hook,) = out.rows["hook_runs"]
    assert hook[23] is True
    by_idx = {r[8]: r for r in out.rows["script_runs"]}
    assert by_idx[1][22] is True and by_idx[0][22] is False


def test_runner_killed_attribute_is_read_on_spans_with_their_end():
    """The attribute is authoritative even where the records have an end (an
    agent that knows better than the records); a span with events is checked."""
    node = Node()
    hook_id, recs = node.hook(fail_index=1, n_scripts=3)  # script 1 fails: an output event
    req = otlp.trace_request(recs)
    _mark_killed(_span_by_id(req, C.script_span_id(hook_id, 1)))
    out = dec(req.SerializeToString())
    by_idx = {r[8]: r for r in out.rows["script_runs"]}
    assert by_idx[1][22] is True and by_idx[0][22] is False
    assert out.rows["hook_runs"][0][23] is False


# ---------------------------------------------------------------- JSON parser fallback
def _decode_module_without_msgspec(monkeypatch):
    """A second copy of collector.decode imported as if msgspec were not installed."""
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "msgspec", None)  # import msgspec -> ImportError
    spec = importlib.util.spec_from_file_location("collector._decode_stdlib", D.__file__)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_stdlib_json_fallback_decodes_the_same(monkeypatch):
    plain = _decode_module_without_msgspec(monkeypatch)
    assert plain._loads is json.loads and plain._JSON_ERRORS == (ValueError,)
    node = Node()
    payloads = [hook_message(node, fail_index=i % 3 if i % 2 else None)[2] for i in range(6)]
    payloads.append(hook_message(node, killed_at=0)[2])
    for payload in payloads:
        a = D.decode_message(payload, SPANS, 7, NOW)
        b = plain.decode_message(payload, SPANS, 7, NOW)
        assert isinstance(b, plain.Decoded) and a.rows == b.rows and a.n_spans == b.n_spans

    def garble(req, recs):
        _set_records(req, 1, '{"v": 1, "kind": "script_started", garbage')
    bad = _spans_with(garble)
    for mod in (D, plain):
        out = mod.decode_message(bad, SPANS, 7, NOW)
        assert out.reason == D.DL_BAD_RECORD and "not JSON lines" in out.detail, out
