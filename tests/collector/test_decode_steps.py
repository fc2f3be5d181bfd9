"""The span decoder's fast paths keep the exact verdicts of the checks they
short-cut (collector/decode_spans.py), and the consumer's garbage-collection
policy nests and restores (collector/gcpolicy.py), and the archive's cached
partition names are the uncached ones (collector/columns.py)."""

import gc
import json
import time

import pytest

from collector import decode as D
from collector import gcpolicy
from emitter import contract as C
from emitter import otlp
from tests.collector.gen import Node, hook_message

NOW = time.time_ns()
SPANS = C.subject(C.SIGNAL_SPANS, "gpu1", "node001")


def _with_script_ts(value):
    """A hook message whose first script_started record carries ``ts = value``."""
    node = Node()
    _, recs = node.hook(n_scripts=2)
    req = otlp.trace_request(recs)
    span = req.resource_spans[0].scope_spans[0].spans[1]
    for kv in span.attributes:
        if kv.key == C.A_RECORDS:
            lines = kv.value.string_value.split("\n")
            rec = json.loads(lines[0])
            assert rec[C.R_KIND] == C.K_SCRIPT_STARTED
            rec[C.R_TS] = value
            lines[0] = json.dumps(rec)
            kv.value.string_value = "\n".join(lines)
    return req.SerializeToString()


@pytest.mark.parametrize("value,reason,words", [
    (True, D.DL_BAD_TIMESTAMP, "outside"),           # a bool compares as 1: out of range
    (False, D.DL_BAD_TIMESTAMP, "outside"),
    (float(NOW - 10**9), D.DL_BAD_RECORD, "not integer ns"),  # in range, but a float
    (1.5, D.DL_BAD_TIMESTAMP, "outside"),            # a float out of range
    ("1700000000000000000", D.DL_BAD_RECORD, "not integer ns"),
    (None, D.DL_BAD_RECORD, "not integer ns"),
    ([1], D.DL_BAD_RECORD, "not integer ns"),
    (NOW + 2 * 86400 * 10**9, D.DL_BAD_TIMESTAMP, "outside"),
])
def test_record_timestamp_of_every_json_type(value, reason, words):
    out = D.decode_message(_with_script_ts(value), SPANS, 7, NOW)
    assert isinstance(out, D.DeadLetter) and out.reason == reason and words in out.detail, out


def test_integer_timestamp_in_range_is_stored_verbatim():
    ts = NOW - 10**9
    out = D.decode_message(_with_script_ts(ts), SPANS, 7, NOW)
    assert isinstance(out, D.Decoded), out
    assert ts in {row[15] for row in out.rows["script_runs"]}  # start_ts


def test_every_record_and_run_of_a_message_becomes_a_row():
    """Through the split steps, each message still gives one hook row, a row
    per script that started, and every record verbatim in the journal."""
    node = Node()
    for i in range(20):
        subj, _, payload, recs = hook_message(node, fail_index=i % 5 if i % 2 else None)
        out = D.decode_message(payload, subj, i + 1, NOW)
        assert isinstance(out, D.Decoded), out
        assert len(out.rows["journal"]) == len(recs)
        assert sorted(r[8] for r in out.rows["journal"]) == sorted(C.canonical_json(r) for r in recs)
        assert len(out.rows["hook_runs"]) == 1
        assert out.rows["hook_runs"][0][28] == i + 1  # stream_seq
        started = sum(1 for r in recs if r[C.R_KIND] == C.K_SCRIPT_STARTED)
        assert len(out.rows["script_runs"]) == started


def test_gc_policy_nests_and_restores():
    import sys

    was, switch = gc.isenabled(), sys.getswitchinterval()
    gc.enable()
    sys.setswitchinterval(0.005)
    try:
        gcpolicy.hold()
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == pytest.approx(gcpolicy.SWITCH_INTERVAL_S, rel=0.05)
        gcpolicy.hold()           # a second collector in the same process
        gcpolicy.release()
        assert not gc.isenabled()  # the first still runs
        assert sys.getswitchinterval() == pytest.approx(gcpolicy.SWITCH_INTERVAL_S, rel=0.05)
        gcpolicy.maybe_collect(idle=True)
        gcpolicy.release()
        assert gc.isenabled() and gc.get_freeze_count() == 0
        assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)  # the host's setting again
        gc.disable()              # found off: left off
        shorter = gcpolicy.SWITCH_INTERVAL_S / 2
        sys.setswitchinterval(shorter)  # found shorter: left shorter
        gcpolicy.hold()
        assert sys.getswitchinterval() == pytest.approx(shorter, rel=0.05)
        gcpolicy.release()
        assert not gc.isenabled() and sys.getswitchinterval() == pytest.approx(shorter, rel=0.05)
    finally:
        (gc.enable if was else gc.disable)()
        sys.setswitchinterval(switch)


@pytest.mark.parametrize("cluster", ["gpu1", "_hidden", ".dot", "a/b c%", "ünï", "", None, 1, True, 1.0,
                                     ["a"], {"k": 1}])
def test_partition_value_cached_equals_uncached(cluster, monkeypatch):
    from collector import columns as K

    monkeypatch.setattr(K, "_PARTITION_CACHE", {})
    want = K._partition_value(cluster)
    assert K.partition_value(cluster) == want   # filled
    assert K.partition_value(cluster) == want   # from the cache
    # only plain str names are cached (True == 1 == 1.0 as dict keys; lists are unhashable)
    if type(cluster) is str:
        assert K._PARTITION_CACHE[cluster] == want
    assert all(type(k) is str for k in K._PARTITION_CACHE)


def test_partition_value_cache_is_bounded(monkeypatch):
    from collector import columns as K

    monkeypatch.setattr(K, "_PARTITION_CACHE", {})
    monkeypatch.setattr(K, "_PARTITION_CACHE_MAX", 8)
    for i in range(20):  # cluster names come from payloads: a flood of them must not grow memory
        assert K.partition_value(f"c{i}") == f"c{i}"
        assert len(K._PARTITION_CACHE) <= 8
    assert K.partition_value("_x") == "%5Fx"
