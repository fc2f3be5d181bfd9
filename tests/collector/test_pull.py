"""collector/pull.py against a real nats-server: one byte-limited pull request
at a time, the end statuses (404/408/409), oversize messages, a deleted
consumer, and a burst larger than the server's per-client pending limit
consumed by the collector with no slow-consumer cut and no redelivery."""

from __future__ import annotations

import asyncio

import duckdb
import pytest

from collector.config import CollectorConfig
from collector.consumer import Collector
from collector.pull import PULL_MAX_BYTES, Puller, PullError
from emitter import contract as C
from emitter.natsio import ensure_streams
from tests.collector.gen import Node, hook_message

#: nats-server's default per-client outbound limit (max_pending), which the
#: old fetch overran
SERVER_MAX_PENDING = 64 * 1024 * 1024


async def _js(url):
    import nats
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await ensure_streams(js)
    return nc, js


async def _publish_all(nc, js, msgs):
    """Publish without waiting for each ack, then wait until the stream holds them."""
    base = (await js.stream_info(C.STREAM_NAME)).state.messages
    for subj, mid, payload in msgs:
        await nc.publish(subj, payload, headers={C.HDR_MSG_ID: mid, C.HDR_SCHEMA: "1"})
    await nc.flush(timeout=60)
    for _ in range(6000):
        if (await js.stream_info(C.STREAM_NAME)).state.messages >= base + len(msgs):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the stream never held all published messages")


async def _durable(js, name, ack_wait=600.0):
    from nats.js.api import AckPolicy, ConsumerConfig
    await js.add_consumer(C.STREAM_NAME, ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT,
                                                        ack_wait=ack_wait, max_ack_pending=20000))


async def _fetch_until(p, n, rounds=200):
    got = []
    for _ in range(rounds):
        got += await p.fetch(0.5)
        if len(got) >= n:
            break
    return got


def _messages(n, nodes=64, output=None):
    ns = [Node(f"node{i:03d}") for i in range(nodes)]
    out = []
    for i in range(n):
        subj, mid, payload, _ = hook_message(ns[i % nodes], job_id=str(1000 + i),
                                             fail_index=0 if output else None, output=output)
        out.append((subj, mid, payload))
    return out


def test_a_request_asks_for_batch_and_bytes_and_ends_on_its_status(nats_server):
    """Every message comes back once; an idle request expires (408) and a new
    one is sent; a trickle is handed over as it arrives (nothing pending)."""

    async def go():
        nc, js = await _js(nats_server.url)
        try:
            await _durable(js, "p1")
            p = await Puller(nc, C.STREAM_NAME, "p1", batch=10, max_bytes=PULL_MAX_BYTES,
                             expires=0.3).start()
            assert await p.fetch(1.5) == []  # idle: requests expire, new ones follow
            assert p.statuses.get("408", 0) >= 1 and p.requests >= 2
            await _publish_all(nc, js, _messages(25))
            got = await _fetch_until(p, 25)
            for m in got:
                await m.ack()
            assert len(got) == 25
            assert len({m.reply.split(".")[5] for m in got}) == 25  # 25 distinct stream seqs
            assert p.requests >= 3  # batch 10: at least three requests for 25
            await p.close()
        finally:
            await nc.close()

    asyncio.run(go())


def test_a_message_larger_than_max_bytes_is_fetched_alone(nats_server):
    """The server answers 409 "Message Size Exceeds MaxBytes" before sending
    anything: the next request asks for that one message with no byte limit."""

    async def go():
        nc, js = await _js(nats_server.url)
        try:
            await _durable(js, "p2")
            msgs = _messages(6)
            assert all(len(m[2]) > 2000 for m in msgs)
            await _publish_all(nc, js, msgs)
            p = await Puller(nc, C.STREAM_NAME, "p2", batch=100, max_bytes=2000).start()
            got = await _fetch_until(p, 6)
            for m in got:
                await m.ack()
            assert len(got) == 6
            assert p.statuses.get("409", 0) >= 6
            await p.close()
        finally:
            await nc.close()

    asyncio.run(go())


def test_a_deleted_consumer_ends_the_request_then_raises(nats_server):
    """409 Consumer Deleted ends the open request; the next one finds no
    consumer (503) and fetch raises, so the collector binds again."""

    async def go():
        nc, js = await _js(nats_server.url)
        try:
            await _durable(js, "p3")
            p = await Puller(nc, C.STREAM_NAME, "p3", batch=10, expires=30.0).start()
            assert await p.fetch(0.3) == []  # a request is open now
            await js.delete_consumer(C.STREAM_NAME, "p3")
            with pytest.raises(PullError) as e:
                for _ in range(100):
                    await p.fetch(0.3)
            assert e.value.code == "503"
            assert p.statuses.get("409", 0) == 1
            await p.close(nak=False)
        finally:
            await nc.close()

    asyncio.run(go())


def test_close_naks_what_was_received_but_not_handed_over(nats_server):
    """Messages delivered to an open request when the puller closes go back
    now, not after ack_wait (600 s here), to another puller on the durable."""

    async def go():
        nc, js = await _js(nats_server.url)
        try:
            await _durable(js, "p4", ack_wait=600.0)
            a = await Puller(nc, C.STREAM_NAME, "p4", batch=50, expires=30.0).start()
            assert await a.fetch(0.3) == []  # leaves a request open (batch 50)
            await _publish_all(nc, js, _messages(5))
            for _ in range(200):  # delivered to a's open request, not yet fetched
                info = await js.consumer_info(C.STREAM_NAME, "p4")
                if info.num_ack_pending == 5:
                    break
                await asyncio.sleep(0.05)
            assert info.num_ack_pending == 5
            await a.close()
            b = await Puller(nc, C.STREAM_NAME, "p4", batch=50, expires=30.0).start()
            got = await _fetch_until(b, 5, rounds=40)  # 20 s at most, far below ack_wait
            assert len(got) == 5
            for m in got:
                await m.ack()
            await b.close()
        finally:
            await nc.close()

    asyncio.run(go())


@pytest.mark.slow
def test_a_burst_beyond_the_servers_pending_limit_has_no_slow_consumer_cut(nats_server, tmp_path):
    """More than 64 MiB published while the collector consumes (what
    nats-py's fetch turned into a slow-consumer disconnect and redeliveries
    after ack_wait): every message is stored with no disconnect, no reconnect
    and not one redelivery.  ack_wait is 600 s, so a redelivery could not
    hide in the wait below."""
    # the burst of tests/bench/bench_collector.py: 4,096 nodes x prolog+epilog
    ns = [Node(f"node{i:04d}") for i in range(4096)]
    msgs = [hook_message(node, job_id="7", context=ctx)[:3]
            for ctx in ("prolog_slurmd", "epilog_slurmd") for node in ns]
    assert sum(len(m[2]) for m in msgs) > SERVER_MAX_PENDING
    cfg = CollectorConfig(nats_url=nats_server.url, db=str(tmp_path / "b.duckdb"),
                          archive=str(tmp_path / "archive"), instance="b1", batch=2048, ack_wait=600.0)
    col = Collector(cfg)

    async def go():
        await col.connect()
        task = asyncio.create_task(col.run())
        try:
            nc, js = await _js(nats_server.url)
            try:  # published from the collector's own event loop, as the agents' burst arrives
                await _publish_all(nc, js, msgs)
            finally:
                await nc.close()
            for _ in range(6000):  # 300 s at most: a condition, not a timing
                if col.metrics.snapshot()["messages"] >= len(msgs) or task.done():
                    break
                await asyncio.sleep(0.05)
            reconnects = col.nc.stats["reconnects"]
            info = await col.js.consumer_info(C.STREAM_NAME, cfg.durable)
            return col.metrics.snapshot()["messages"], reconnects, info
        finally:
            col.stop()
            await task
            await col.close_nats()

    try:
        stored, reconnects, info = asyncio.run(go())
    finally:
        col.close()
    log = (nats_server.store_dir / "nats-server.log").read_text(errors="replace")
    assert "Slow Consumer" not in log, [x for x in log.splitlines() if "Slow Consumer" in x][:3]
    assert reconnects == 0
    assert info.num_redelivered == 0
    assert stored == len(msgs)
    assert info.delivered.consumer_seq == info.delivered.stream_seq == len(msgs)
    con = duckdb.connect(cfg.db, read_only=True)
    try:
        assert con.execute("select count(*) from hook_runs").fetchone()[0] == len(msgs)
    finally:
        con.close()
