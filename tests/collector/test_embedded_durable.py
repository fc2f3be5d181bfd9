"""Durable by default: the embedded nats-server fsyncs before every PubAck.

Read from the running server's own monitoring endpoint (``/varz``: JetStream
``config.sync_always``), not from the config text we wrote, so a setting the
server ignored or overrode would fail here."""

from __future__ import annotations

import json
import urllib.request

from collector.embedded import NatsServer, durable_config
from tests.helpers.servers import NatsCluster, deploy_nats_config


def _js_config(srv: NatsServer) -> dict:
    assert srv.monitor_url, "server started without a monitoring port"
    with urllib.request.urlopen(srv.monitor_url.rstrip("/") + "/varz", timeout=10) as r:
        varz = json.load(r)
    return varz["jetstream"]["config"]


def test_embedded_server_syncs_always(tmp_path):
    with NatsServer(store_dir=tmp_path / "nats", extra_args=["-m", "-1"]) as srv:
        cfg = _js_config(srv)
    assert cfg.get("sync_always") is True, cfg


def test_embedded_server_with_a_config_still_syncs_always(tmp_path):
    conf = "authorization { user: a, password: b }\njetstream {\n  max_file_store: 1G\n}\n"
    with NatsServer(store_dir=tmp_path / "nats", config=conf, extra_args=["-m", "-1"]) as srv:
        cfg = _js_config(srv)
    assert cfg.get("sync_always") is True, cfg
    assert cfg.get("max_storage") == 10**9  # 1G; the caller's block was kept, not replaced


def test_the_server_default_is_not_durable(tmp_path):
    """The control: without our setting the server acks before fsync (2 min)."""
    with NatsServer(store_dir=tmp_path / "nats", extra_args=["-m", "-1"], sync=None) as srv:
        cfg = _js_config(srv)
    assert not cfg.get("sync_always"), cfg
    assert cfg.get("sync_interval") == 120 * 10**9


def test_cluster_servers_sync_always(tmp_path):
    cl = NatsCluster(tmp_path / "cl", n=3)
    cl.start()
    try:
        for srv in cl.servers:
            assert srv.config is not None
            assert "sync_interval: always" in durable_config(srv.config, srv.sync)
    finally:
        cl.stop()


def test_durable_config_is_pure():
    assert durable_config(None) == "jetstream { sync_interval: always }\n"
    assert durable_config("jetstream { sync_interval: 10s }") == "jetstream { sync_interval: 10s }"
    assert durable_config("x: 1", None) == "x: 1"


def test_deploy_server_config_syncs_always(tmp_path):
    """deploy/nats/nats-server.conf, run as shipped (store dir and ports from
    the command line, an empty auth.conf)."""
    text = deploy_nats_config(tmp_path / "nats")
    with NatsServer(store_dir=tmp_path / "nats", config=text, extra_args=["-m", "-1"]) as srv:
        cfg = _js_config(srv)
    assert cfg.get("sync_always") is True, cfg
