"""Direct mode's raw-socket publish: deadline and behaviour against real peers."""

import socket
import threading
import time

from tests.agent.agentkit import journal_files, stream_messages, write_hooks_fast

from emitter import otlp
from emitter import direct


def test_silent_peer_costs_at_most_the_deadline(tmp_path):
    """A TCP peer that accepts and never speaks (a wedged server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    write_hooks_fast(tmp_path, 1)
    (name,) = journal_files(tmp_path)
    try:
        t = time.monotonic()
        direct.ship(tmp_path, tmp_path / name, 0.2, {"agent": {"nats": f"nats://127.0.0.1:{srv.getsockname()[1]}"}},
                    detach=False)
        assert time.monotonic() - t < 0.35
    finally:
        srv.close()
    assert journal_files(tmp_path) == [name]  # kept for the agent


def _ensure_streams(url):
    import asyncio

    from emitter import natsio

    async def streams():
        nc = await natsio.connect(natsio.NatsOptions(servers=url))
        await natsio.ensure_streams(nc.jetstream())
        await nc.close()

    asyncio.run(streams())


def test_direct_publishes_and_ships_backlog_in_process(tmp_path, nats_server):
    _ensure_streams(nats_server.url)
    write_hooks_fast(tmp_path, 4)
    names = journal_files(tmp_path)
    direct.ship(tmp_path, tmp_path / names[-1], 2.0, {"agent": {"nats": nats_server.url}}, detach=False)
    assert journal_files(tmp_path) == []
    msgs = stream_messages(nats_server.url)
    assert len(msgs) == 4 and msgs[0].headers["Nats-Msg-Id"].endswith(
        otlp.records_key(otlp.decode_trace(msgs[0].data)))  # the agent's key for the same file


def test_no_stream_means_the_file_stays(tmp_path, nats_server):
    write_hooks_fast(tmp_path, 1)
    (name,) = journal_files(tmp_path)
    direct.ship(tmp_path, tmp_path / name, 1.0, {"agent": {"nats": nats_server.url}}, detach=False)
    assert journal_files(tmp_path) == [name]


def test_never_raises_on_nonsense():
    direct.ship(None, None, "x", 42)
    direct.ship("/nonexistent", "/nonexistent/x.jsonl", 0.1, None, detach=False)


def test_a_non_root_run_leaves_its_file_for_the_agent(tmp_path, nats_server, monkeypatch):
    """Only the agent may ship a per-owner spool's file: it attests the uid from
    the spool's owner; direct mode would send it unmarked, read as root's."""
    _ensure_streams(nats_server.url)
    write_hooks_fast(tmp_path, 1)
    (name,) = journal_files(tmp_path)
    monkeypatch.setattr(direct.os, "geteuid", lambda: 1000)
    direct.ship(tmp_path, tmp_path / name, 2.0, {"agent": {"nats": nats_server.url}}, detach=False)
    assert journal_files(tmp_path) == [name]
    monkeypatch.undo()  # as root the same file ships: it was left untouched
    direct.ship(tmp_path, tmp_path / name, 2.0, {"agent": {"nats": nats_server.url}}, detach=False)
    assert journal_files(tmp_path) == [] and len(stream_messages(nats_server.url)) == 1
