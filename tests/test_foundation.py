"""The contract's pure helpers and the embedded server."""

import asyncio
import json

import pytest

from emitter import contract as c


def test_record_hash_ignores_hash_field_and_key_order():
    a = {"kind": "hook_started", "seq": 1, "prev": c.CHAIN_GENESIS, "ts": 5}
    b = dict(reversed(list(a.items())))
    assert c.record_hash(a) == c.record_hash(b)
    a2 = dict(a, hash="x" * 64)
    assert c.record_hash(a2) == c.record_hash(a)
    assert c.record_hash(dict(a, ts=6)) != c.record_hash(a)


def test_canonical_json_is_compact_sorted_utf8():
    assert c.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_trace_id_per_job_and_restart():
    t = c.trace_id("gpu1", "42", 0)
    assert len(t) == 32 and int(t, 16)
    assert t == c.trace_id("gpu1", 42, None)
    assert t != c.trace_id("gpu1", "42", 1)
    assert t != c.trace_id("gpu2", "42", 0)


def test_subjects_are_safe_tokens():
    assert c.subject("spans", "gpu.1", "node*01") == "hookscope.spans.gpu_1.node_01"
    assert c.subject("spans", "", "n") == "hookscope.spans._.n"
    assert c.deadletter_subject("bad proto").startswith("hookscope.deadletter.")


def test_script_span_ids_distinct():
    ids = {c.script_span_id("a" * 16, i) for i in range(100)}
    assert len(ids) == 100 and all(len(i) == 16 for i in ids)


def test_embedded_server_roundtrip(nats_server):
    import nats

    async def go():
        nc = await nats.connect(nats_server.url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream(timeout=2)
            await js.add_stream(name="T", subjects=["t.>"])
            ack = await js.publish("t.x", b"hi", headers={c.HDR_MSG_ID: "1"})
            dup = await js.publish("t.x", b"hi", headers={c.HDR_MSG_ID: "1"})
            assert ack.seq == 1 and dup.duplicate
        finally:
            await nc.close()

    asyncio.run(go())
    port = nats_server.port
    nats_server.restart()
    assert nats_server.port == port and nats_server.running
