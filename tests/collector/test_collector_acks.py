"""When the collector acks, against a real nats-server: a committed batch is
acked as soon as its commit is over, not after the next fetch, which waits
``fetch_timeout`` when nothing more arrives (the last batch of a burst)."""

import asyncio
import time

import pytest

from collector.config import CollectorConfig
from collector.consumer import Collector
from emitter import contract as C
from tests.collector.gen import Node, hook_message
from tests.collector.harness import counts
from tests.helpers.pipeline import publish

pytestmark = pytest.mark.slow


def test_the_last_batch_is_acked_without_waiting_for_the_idle_fetch(nats_server, tmp_path):
    msgs = [hook_message(Node(f"node{i:03d}"), n_scripts=2)[:3] for i in range(5)]
    publish(nats_server.url, msgs)
    db = tmp_path / "h.duckdb"
    # a fetch that finds nothing waits 60 s: the acks must not wait with it
    cfg = CollectorConfig(nats_url=nats_server.url, db=str(db), archive=str(tmp_path / "archive"),
                          instance="a1", fetch_timeout=60.0, fsync=False)
    col = Collector(cfg)

    async def go():
        await col.connect()
        task = asyncio.create_task(col.run())
        try:
            deadline = time.monotonic() + 30
            while col.metrics.snapshot()["messages"] < len(msgs):
                assert time.monotonic() < deadline, "the batch's acks waited for the idle fetch"
                assert not task.done(), task
                await asyncio.sleep(0.05)
            info = await col.js.consumer_info(C.STREAM_NAME, cfg.durable)
            return info.num_ack_pending, info.num_pending
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await col.close_nats()

    try:
        assert asyncio.run(go()) == (0, 0)
    finally:
        col.close()
    assert counts(db)["hook_runs"] == len(msgs)
