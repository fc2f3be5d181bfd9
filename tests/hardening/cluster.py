"""A 3-node nats-server cluster with JetStream on loopback, for the fault matrix.

Prefers ``collector.embedded.EmbeddedCluster`` when the collector package
provides one; otherwise builds the cluster from three ``NatsServer``s with a
``cluster {}`` block.  Route ports are chosen by binding port 0 first (the
client ports are chosen by nats-server itself)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from collector.embedded import NatsServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsCluster:
    def __init__(self, base: Path, n: int = 3, name: str = "hookscope-test"):
        self.base = Path(base)
        routes = [_free_port() for _ in range(n)]
        self.servers: list[NatsServer] = []
        for i in range(n):
            others = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i)
            # max_file_store: the stream reserves contract max_bytes (20 GiB) per
            # replica; placement fails on a small test disk without a larger limit.
            conf = (f"jetstream {{\n  max_file_store: 1T\n}}\n"
                    f"cluster {{\n  name: {name}\n  listen: 127.0.0.1:{routes[i]}\n"
                    f"  routes: [{others}]\n}}\n")
            self.servers.append(NatsServer(store_dir=self.base / f"n{i}", config=conf, name=f"n{i}"))

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers if s.port and s.running]

    def start(self, timeout: float = 30) -> "NatsCluster":
        for s in self.servers:
            s.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Until JetStream has a meta leader (a stream can be created)."""
        import asyncio

        import nats

        async def probe():
            nc = await nats.connect(self.urls, connect_timeout=2, max_reconnect_attempts=1)
            try:
                await nc.jetstream(timeout=2).account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if asyncio.run(probe()):
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"JetStream cluster not ready within {timeout}s (logs under {self.base})")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def __enter__(self) -> "NatsCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
