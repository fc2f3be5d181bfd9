"""collector._fastspans (the span decoder in C) against
``decode_spans.decode_traces_py`` (the Python reference), side by side.

The C path may decline any message (None: Python decodes it).  When it
answers, its result must equal the reference's exactly, with the same types
(``1``, ``True`` and ``1.0`` are equal in Python but not in a column).  The
messages: the agent's own encoding of generated hooks, records mutated field
by field (hypothesis), OTLP-level changes (events, attributes, resources,
unknown fields), and random byte damage.  The plain messages must all be
taken by the C path, so that these tests cannot pass by it declining
everything.

Without the extension (no compiler) these tests skip, except under
``CI=true``, where they fail: CI must test what production runs.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector import decode as D
from collector import decode_spans as S
from collector.decode_util import _Bad
from collector.decoded import DeadLetter, Decoded
from emitter import contract as C
from emitter import otlp
from tests.collector.gen import Node, hook_message

NOW = time.time_ns()


@pytest.fixture(scope="module")
def fast():
    dec = S.fast_decoder(D._loads)
    if dec is None:
        if os.environ.get("CI") == "true":
            pytest.fail("collector._fastspans is not built: `pip install -e .` needs gcc and the Python headers")
        pytest.skip("collector._fastspans is not built (no compiler): the collector decodes in Python")
    return dec


def same(a, b) -> bool:
    """Equal, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def reference(payload, seq=7, rns=NOW):
    try:
        return S.decode_traces_py(payload, seq, rns, D._loads, D._JSON_ERRORS)
    except _Bad as exc:
        return DeadLetter(exc.reason, exc.detail)
    except Exception as exc:  # decode_message turns these into dead letters too
        return DeadLetter("raised", type(exc).__name__)


def check(fast, payload, seq=7, rns=NOW) -> bool:
    """True when the C path took the message (and agreed); False when it declined."""
    if fast(payload, seq, rns) is None:
        return False
    ref = reference(payload, seq, rns)
    assert isinstance(ref, Decoded), f"the C path took a message Python refuses: {ref}"
    got = S.decode_traces(payload, seq, rns, D._loads, D._JSON_ERRORS)
    assert same(vars(got), vars(ref)), _diff(vars(got), vars(ref))
    return True


def _diff(a, b):
    for k in a:
        if not same(a[k], b[k]):
            if k == "rows":
                for t in set(a[k]) | set(b[k]):
                    ra, rb = a[k].get(t), b[k].get(t)
                    if not same(ra, rb):
                        return f"{t}: C {ra!r:.600} != Python {rb!r:.600}"
            return f"{k}: C {a[k]!r:.300} != Python {b[k]!r:.300}"
    return "?"


def _encode(recs, **kw):
    abandoned = recs[-1][C.R_TS] + 10**9 if recs[-1].get(C.R_KIND) != C.K_HOOK_ENDED else None
    return otlp.fitted_trace(recs, abandoned_ts=abandoned, **kw).SerializeToString()


OUTPUTS = ["boom", "caf\u00e9 \u2603 \U0001F600", "\x1b[31mred\x1b[0m\r\n\ttab", "<b>x</b>&amp;", "\u2028\u2029",
           'quote " back \\ slash', "x" * 5000]


def _plain_messages():
    node = Node("node0007", cluster="gpu-a")
    out = []
    for i in range(40):
        kw = dict(job_id=str(1000 + i), n_scripts=i % 9, context=C.CONTEXTS[i % 8])
        if i % 3 == 0 and kw["n_scripts"]:
            kw.update(fail_index=i % kw["n_scripts"], output=OUTPUTS[i % len(OUTPUTS)])
        if i % 5 == 0:
            kw["user"] = None
        out.append(hook_message(node, **kw)[2])
    # two hooks' spans in one request (the agent sends one hook a message)
    two = ExportTraceServiceRequest()
    two.ParseFromString(out[1])
    other = ExportTraceServiceRequest()
    other.ParseFromString(out[2])
    _spans(two).extend(_spans(other))
    out.append(two.SerializeToString())
    return out


def test_plain_messages_all_take_the_c_path_and_agree(fast):
    msgs = _plain_messages()
    taken = [check(fast, p, seq=i + 1) for i, p in enumerate(msgs)]
    assert all(taken), f"declined {taken.count(False)} of {len(msgs)} plain messages"


def test_the_rare_shapes_are_left_to_python(fast):
    """Killed runners, node events, older records: None from C, and the
    public decoder still gives the reference's rows."""
    node = Node()
    _, killed = node.hook(n_scripts=3, killed_at=1)
    _, old = node.hook(n_scripts=1)
    old = [dict(r, **{C.R_VERSION: 0}) for r in old]
    cases = [_encode(killed), _encode([node.node_event()]), _encode(old)]
    for p in cases:
        assert fast(p, 1, NOW) is None
        got = D.decode_message(p, C.subject(C.SIGNAL_SPANS, node.cluster, node.node), 1, NOW)
        want = reference(p, 1, NOW)
        assert type(got) is type(want)


JOBS = [
    {"gpus": None, "cuda_visible_devices": "GPU-6f2b1c3e-0000-4000-8000-000000000001"},  # 25.11: UUIDs
    {"gpus": "", "cuda_visible_devices": None, "rocr_visible_devices": "0,1"},
    {"gpus": None, "cuda_visible_devices": "", "rocr_visible_devices": ""},
    {"uid": "not a number", "restart_count": "١"},
    {"uid": 1000, "restart_count": None, "job_id": None, "array_job_id": "77", "array_task_id": "3"},
]


@pytest.mark.parametrize("job", JOBS, ids=range(len(JOBS)))
def test_job_variants_take_the_c_path_and_agree(fast, job):
    node = Node()
    _, recs = node.hook(n_scripts=2)
    recs[0] = dict(recs[0], **{C.R_JOB: dict(recs[0][C.R_JOB], **job)})
    assert check(fast, _encode(recs))


# ------------------------------------------------------------ records mutated
PALETTE = [None, True, False, 0, 1, -1, 7, 2**63 - 1, 2**63, 2**64 + 5, 1.5, 1.0, "", "x", "1000", " 12 ",
           "\u0661\u0662", "caf\u00e9", [], ["w"], [1, None], {}, {"a": 1}, "MISSING"]
FIELDS = [C.R_VERSION, C.R_CLUSTER, C.R_NODE, C.R_SEQ, C.R_KIND, C.R_HOOK_ID, C.R_HASH, C.R_PREV, C.R_TS,
          C.R_CHAIN, C.R_INDEX, C.R_JOB, C.R_CONTEXT, C.R_WARNINGS, C.R_LAYOUT, C.R_DURATION_NS, C.R_STATUS,
          C.R_N_SCRIPTS, C.R_FAILED_INDEX, C.R_PATH, C.R_SHA256, C.R_SIZE, C.R_MODE, C.R_UID, C.R_MTIME,
          C.R_EXIT, C.R_SIGNAL, C.R_TIMED_OUT, C.R_REFUSED, C.R_OUTPUT, C.R_OUTPUT_TRUNCATED, C.R_CUT,
          C.R_EXPORTED, "job.job_id", "job.uid", "job.restart_count", "job.gpus", "job.cuda_visible_devices",
          "job.user"]


def _mutate(recs, i, field, value):
    recs = [dict(r) for r in recs]
    rec = recs[i % len(recs)]
    if field.startswith("job."):
        job = rec.get(C.R_JOB)
        if not isinstance(job, dict):
            return recs
        rec[C.R_JOB] = job = dict(job)
        rec, field = job, field[4:]
    if value == "MISSING":
        rec.pop(field, None)
    else:
        rec[field] = value
    return recs


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 4), fail=st.booleans(), muts=st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from(FIELDS), st.sampled_from(PALETTE)), min_size=1, max_size=3))
def test_mutated_records_agree(fast, n, fail, muts):
    node = Node()
    _, recs = node.hook(n_scripts=n, fail_index=n - 1 if fail and n else None)
    for i, field, value in muts:
        recs = _mutate(recs, i, field, value)
    try:
        payload = _encode(recs)
    except Exception:  # the agent's encoder refuses it: never on the wire
        return
    check(fast, payload)


# ------------------------------------------------------------ OTLP-level changes
def _base():
    req = ExportTraceServiceRequest()
    req.ParseFromString(hook_message(Node(), n_scripts=3, fail_index=2)[2])
    return req


def _spans(req):
    return req.resource_spans[0].scope_spans[0].spans


def _set_attr(attrs, key, kind, value):
    kv = attrs.add()
    kv.key = key
    if kind is not None:
        setattr(kv.value, kind, value)


EDITS = {
    "attested uid": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID, "int_value", 1000),
    "attested root": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID, "int_value", 0),
    "attested too big": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID,
                                            "int_value", 2**32),
    "attested negative": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID,
                                             "int_value", -1),
    "attested as text": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID,
                                            "string_value", "1000"),
    "attested empty": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_ATTESTED_UID, None, 0),
    "service twice, last foreign": lambda r: _set_attr(r.resource_spans[0].resource.attributes,
                                                       C.A_SERVICE_NAME, "string_value", "other"),
    "service twice, last ours": lambda r: (_set_attr(r.resource_spans[0].resource.attributes, C.A_SERVICE_NAME,
                                                     "string_value", "x"),
                                           _set_attr(r.resource_spans[0].resource.attributes, C.A_SERVICE_NAME,
                                                     "string_value", C.SERVICE_NAME)),
    "service as int": lambda r: _set_attr(r.resource_spans[0].resource.attributes, C.A_SERVICE_NAME,
                                          "int_value", 1),
    "no resource spans": lambda r: r.ClearField("resource_spans"),
    "second resource, same": lambda r: r.resource_spans.add().CopyFrom(r.resource_spans[0]),
    "second resource, other uid": lambda r: (r.resource_spans.add().CopyFrom(r.resource_spans[0]),
                                             _set_attr(r.resource_spans[1].resource.attributes,
                                                       C.A_ATTESTED_UID, "int_value", 5)),
    "second scope": lambda r: r.resource_spans[0].scope_spans.add().CopyFrom(r.resource_spans[0].scope_spans[0]),
    "scope named": lambda r: setattr(r.resource_spans[0].scope_spans[0].scope, "name", "hookscope \u2603"),
    "schema urls": lambda r: (setattr(r.resource_spans[0], "schema_url", "https://x"),
                              setattr(r.resource_spans[0].scope_spans[0], "schema_url", "https://y")),
    "records twice": lambda r: _set_attr(_spans(r)[1].attributes, C.A_RECORDS, "string_value",
                                         _spans(r)[1].attributes[-1].value.string_value),
    "records as int": lambda r: _spans(r)[1].attributes[-1].value.__setattr__("int_value", 3),
    "records empty": lambda r: _spans(r)[1].attributes[-1].value.__setattr__("string_value", ""),
    "short span id": lambda r: setattr(_spans(r)[1], "span_id", b"\x01\x02"),
    "no trace id": lambda r: _spans(r)[0].ClearField("trace_id"),
    "killed attribute false": lambda r: _set_attr(_spans(r)[1].attributes, C.A_KILLED, "bool_value", False),
    "killed attribute true": lambda r: _set_attr(_spans(r)[3].attributes, C.A_KILLED, "bool_value", True),
    "span dropped all": lambda r: _spans(r).__delitem__(slice(1, None)),
    "no spans": lambda r: _spans(r).__delitem__(slice(0, None)),
    "no scope spans": lambda r: r.resource_spans[0].ClearField("scope_spans"),
    "spans reversed": lambda r: _spans(r).reverse(),
    "span duplicated": lambda r: _spans(r).add().CopyFrom(_spans(r)[1]),
    "link": lambda r: _spans(r)[1].links.add(),
    "status text": lambda r: setattr(_spans(r)[0].status, "message", "\u00e9chec"),
}


def _event(r, span=1, name="x.note", ts=None, **attrs):
    ev = _spans(r)[span].events.add()
    ev.name = name
    ev.time_unix_nano = NOW - 10**9 if ts is None else ts
    for k, (kind, v) in attrs.items():
        _set_attr(ev.attributes, k.replace("_", "."), kind, v)


EDITS.update({
    "event plain": lambda r: _event(r, a=("string_value", "v"), b=("int_value", -5), c=("bool_value", True)),
    "event no attributes": lambda r: _event(r, span=0),
    "event empty value": lambda r: _event(r, a=(None, 0)),
    "event double": lambda r: _event(r, a=("double_value", 1.5)),
    "event bytes": lambda r: _event(r, a=("bytes_value", b"\x00\xff")),
    "event key twice": lambda r: _event(r, a=("string_value", "1"), **{"a_": ("int_value", 2)}),
    "event killed": lambda r: _event(r, name=C.E_KILLED),
    "event too early": lambda r: _event(r, ts=10),
    "event too late": lambda r: _event(r, ts=NOW + 2 * 86_400 * 10**9),
    "event unnamed": lambda r: _event(r, name=""),
    "events several": lambda r: [_event(r, span=s, name=f"e{s}", a=("string_value", "\u2603")) for s in (0, 1, 1, 3)],
})


def test_a_span_whose_first_record_names_no_hook(fast):
    """The span's hook for its events is the first one its records name: a
    journal_error with a null hook ahead of the failing script's records."""
    node = Node()
    _, recs = node.hook(n_scripts=2, fail_index=1)
    req = ExportTraceServiceRequest()
    req.ParseFromString(_encode(recs))
    span = _spans(req)[2]  # hook, script 0, script 1 (failed: its output event)
    assert span.events
    err = node.record(C.K_JOURNAL_ERROR, None, recs[3][C.R_TS] - 1, reason="stuck file")
    kv = span.attributes[-1]
    assert kv.key == C.A_RECORDS
    kv.value.string_value = C.canonical_json(err) + "\n" + kv.value.string_value
    assert check(fast, req.SerializeToString())


def _extra(node, kind, hook, ts):
    fields = {C.K_SCRIPT_SKIPPED: {C.R_INDEX: 5, C.R_PATH: "/etc/slurm/prolog.d/zz.sh", C.R_REASON: "filtered"},
              C.K_JOURNAL_ERROR: {C.R_REASON: "truncated"},
              C.K_SPOOL_EVICTED: {"files": 3, "bytes": 4096, "seqs": [1, 3]},
              C.K_NODE_EVENT: {"state": "drain", "reason": "Prolog error", "source": "scontrol"}}[kind]
    return C.canonical_json(node.record(kind, hook, ts, **fields))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inserts=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.sampled_from(
    [C.K_SCRIPT_SKIPPED, C.K_JOURNAL_ERROR, C.K_SPOOL_EVICTED, C.K_NODE_EVENT]), st.booleans()), max_size=4),
    events=st.lists(st.integers(0, 5), max_size=2))
def test_spans_with_records_of_other_kinds_agree(fast, inserts, events):
    """Records of the kinds that are stored but filed under no run, with and
    without a hook, anywhere in a span's records, with or without events."""
    node = Node()
    hook_id, recs = node.hook(n_scripts=3, fail_index=2)
    req = ExportTraceServiceRequest()
    req.ParseFromString(_encode(recs))
    spans = _spans(req)
    for si, pos, kind, named in inserts:
        kv = spans[si % len(spans)].attributes[-1]
        lines = kv.value.string_value.split("\n")
        lines.insert(pos % (len(lines) + 1), _extra(node, kind, hook_id if named else None, recs[0][C.R_TS]))
        kv.value.string_value = "\n".join(lines)
    for si in events:
        _event(req, span=si % len(spans), name="x.note", a=("string_value", "v"))
    check(fast, req.SerializeToString())


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_otlp_edits_agree(fast, edit):
    req = _base()
    EDITS[edit](req)
    check(fast, req.SerializeToString())


@pytest.mark.parametrize("edit", ["event plain", "event no attributes", "events several", "attested uid",
                                  "second scope", "scope named", "status text", "spans reversed"])
def test_common_otlp_shapes_take_the_c_path(fast, edit):
    req = _base()
    EDITS[edit](req)
    assert check(fast, req.SerializeToString())


# ------------------------------------------------------------ wire-level damage
def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_unknown_fields_and_wire_types_are_left_to_python(fast):
    p = _plain_messages()[3]
    cases = [p + _varint(2 << 3 | 0) + _varint(5),  # unknown field 2 of the request
             p + _varint(1 << 3 | 0) + _varint(5),  # field 1 with a varint
             p + _varint(1 << 3 | 3),                # a group
             p + _varint(1 << 3 | 2) + _varint(3) + b"\x80\x80\x80",
             p[:-1], p + b"\x00"]
    for c in cases:
        check(fast, c)


def test_random_damage_agrees(fast):
    rnd = random.Random(14)
    msgs = _plain_messages()[:12]
    for i in range(3000):
        p = bytearray(rnd.choice(msgs))
        for _ in range(rnd.randint(1, 3)):
            op, at = rnd.randrange(4), rnd.randrange(len(p))
            if op == 0:
                p[at] ^= 1 << rnd.randrange(8)
            elif op == 1:
                p[at] = rnd.randrange(256)
            elif op == 2:
                del p[at:at + rnd.randint(1, 8)]
            else:
                p[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 4)))
        check(fast, bytes(p), seq=i + 1)


def test_decode_message_is_the_same_without_the_extension(fast, monkeypatch):
    """The public path (decode_message: identity checks, dead letters)
    gives the same with the extension and without it."""
    node = Node("node0042")
    subj = C.subject(C.SIGNAL_SPANS, node.cluster, node.node)
    payloads = [hook_message(node, n_scripts=k, fail_index=k - 1 if k % 2 else None)[2] for k in range(6)]
    payloads.append(hook_message(Node("other"), n_scripts=2)[2])  # another node's rows: identity mismatch
    with_c = [D.decode_message(p, subj, i, NOW) for i, p in enumerate(payloads)]
    monkeypatch.setattr(S, "_fastspans", None)
    monkeypatch.setattr(S, "_fast_loads", None)
    without = [D.decode_message(p, subj, i, NOW) for i, p in enumerate(payloads)]
    assert all(same(vars(a), vars(b)) for a, b in zip(with_c, without))
    assert type(with_c[-1]) is DeadLetter and with_c[-1].reason == D.DL_IDENTITY
