"""The embedded nats-server can create our streams on any disk.

Each stream reserves its ``max_bytes`` (20 GiB) against the server's
JetStream file-store limit when it is created.  The server's default limit is
75 % of the disk that is free at start, so on a smaller disk stream creation
failed with "insufficient storage resources available" and ``make demo``,
``hookscope collect`` and every NATS test with them.  The real server runs on
a 64 MiB tmpfs here, with our limit and (the control) without it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from collector.embedded import STORE_LIMIT, NatsServer, embedded_config, sized_config
from emitter import contract as c
from emitter import natsio
from tests.helpers.mounts import tmpfs
from tests.helpers.servers import deploy_nats_config


def test_sized_config_is_pure():
    assert sized_config(None) == f"jetstream {{ max_file_store: {STORE_LIMIT} }}\n"
    block = "jetstream {\n  store_dir: /x\n}\n"
    assert sized_config(block) == f"jetstream {{\n  max_file_store: {STORE_LIMIT}\n\n  store_dir: /x\n}}\n"
    for own in ("jetstream {\n  max_file_store: 1G\n}\n", "jetstream { max_file: 5G }\n",
                "jetstream {\n max_disk = 2G\n}"):
        assert sized_config(own) == own  # the caller's own limit is kept
    text = embedded_config("port: 1")
    assert "sync_interval: always" in text and f"max_file_store: {STORE_LIMIT}" in text
    assert text.count("jetstream") == 1
    assert embedded_config(None, None, None) == ""  # no block: JetStream only with -js


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs: far below the 54 GiB free the server default needs."""
    with tmpfs(tmp_path / "small", "size=64m") as d:
        yield d


async def _create_and_publish(url: str) -> int:
    nc = await natsio.connect(natsio.NatsOptions(servers=url))
    try:
        js = nc.jetstream(timeout=10)
        made = await natsio.ensure_streams(js)
        assert set(made) == {c.STREAM_NAME, c.DLQ_STREAM_NAME}
        ack = await js.publish(c.subject("spans", "gpu1", "node001"), b"x")
        return ack.seq
    finally:
        await nc.close()


def _max_storage(srv: NatsServer) -> int:
    with urllib.request.urlopen(srv.monitor_url.rstrip("/") + "/varz", timeout=10) as r:
        return json.load(r)["jetstream"]["config"]["max_storage"]


def test_embedded_server_creates_the_streams_on_a_small_disk(small_disk):
    with NatsServer(store_dir=small_disk / "nats", extra_args=["-m", "-1"]) as srv:
        assert _max_storage(srv) == STORE_LIMIT
        assert asyncio.run(_create_and_publish(srv.url)) == 1


def test_without_the_limit_a_small_disk_refuses_with_a_clear_error(small_disk):
    """The control (the server's own default limit), and what the operator is told."""
    with NatsServer(store_dir=small_disk / "nats", extra_args=["-m", "-1"], store_limit=None) as srv:
        assert _max_storage(srv) < 64 * 1024**2
        with pytest.raises(natsio.StreamNoRoom) as err:
            asyncio.run(_create_and_publish(srv.url))
    msg = str(err.value)
    assert f"stream {c.STREAM_NAME}" in msg and "20 GiB" in msg
    assert "max_file_store" in msg and "deploy/nats/nats-server.conf" in msg


def test_a_callers_smaller_limit_is_kept_and_named(tmp_path):
    with NatsServer(store_dir=tmp_path / "nats", config="jetstream {\n  max_file_store: 1G\n}\n",
                    extra_args=["-m", "-1"]) as srv:
        assert _max_storage(srv) == 10**9
        with pytest.raises(natsio.StreamNoRoom, match="max_file_store"):
            asyncio.run(_create_and_publish(srv.url))


def test_the_deploy_config_creates_the_streams_on_a_small_disk(small_disk):
    """deploy/nats/nats-server.conf as shipped (store dir and ports as flags)."""
    text = deploy_nats_config(small_disk / "nats")
    with NatsServer(store_dir=small_disk / "nats", config=text, extra_args=["-m", "-1"]) as srv:
        assert _max_storage(srv) == 64 * 10**9  # its own line, not ours
        assert asyncio.run(_create_and_publish(srv.url)) == 1


def test_growing_a_smaller_stream_past_the_limit_is_named_too(tmp_path):
    """An existing stream with a smaller max_bytes: ensure_streams updates it,
    and the server's no-room answer to the update is StreamNoRoom as well."""
    async def go(url):
        nc = await natsio.connect(natsio.NatsOptions(servers=url))
        try:
            js = nc.jetstream(timeout=10)
            small = natsio.stream_config(c.STREAM_NAME, c.STREAM_SUBJECTS).evolve(max_bytes=10**8)
            await js.add_stream(small)
            with pytest.raises(natsio.StreamNoRoom, match=f"stream {c.STREAM_NAME}.*max_file_store"):
                await natsio.ensure_streams(js, dlq=False)
            assert (await js.stream_info(c.STREAM_NAME)).config.max_bytes == 10**8  # left as it was
        finally:
            await nc.close()

    with NatsServer(store_dir=tmp_path / "nats", config="jetstream {\n  max_file_store: 1G\n}\n") as srv:
        asyncio.run(go(srv.url))
