"""Connection faults, credentials and memory settings of the collector, against
a real nats-server (with hookscope's generated authorization where it matters)
and real DuckDB files."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess

import duckdb
import pytest

from collector.cli import _settings, collect
from collector.config import DEFAULT_MEMORY_LIMIT, CollectorConfig, NatsAuth
from collector.consumer import Collector
from collector.errors import CollectorError
from emitter import contract as C
from tests.collector.gen import Node, hook_message
from tests.collector.harness import counts, no_duplicates
from tests.helpers.pipeline import HOOKSCOPE, ROOT, collect_once, publish
from tests.helpers.servers import NatsServer


def _cfg(tmp_path, **kw):
    kw.setdefault("nats_url", "nats://127.0.0.1:4222")
    return CollectorConfig(db=str(tmp_path / "h.duckdb"), archive=None, **kw)


# ---------------------------------------------------------------- connect is all or nothing
def test_failed_consumer_setup_closes_the_connection_and_reconnects(nats_server, tmp_path, monkeypatch):
    """A cluster electing a leader times out the stream/consumer calls after the
    TCP connect succeeded.  The collector must not keep that half-set-up
    connection (it used to fetch on a None subscription forever, and --once
    never exited): it closes it, backs off, connects again and drains."""
    import nats.errors

    node = Node()
    msgs = [hook_message(node)[:3] for _ in range(20)]
    publish(nats_server.url, msgs)
    real = Collector._ensure_consumer
    seen = []

    async def flaky(self):
        seen.append(self.nc)
        if len(seen) == 1:
            raise nats.errors.TimeoutError  # what a leaderless JetStream answers
        return await real(self)

    monkeypatch.setattr(Collector, "_ensure_consumer", flaky)
    cfg = CollectorConfig(nats_url=nats_server.url, db=str(tmp_path / "h.duckdb"), archive=None,
                          fsync=False)
    col = Collector(cfg)

    async def go():
        try:
            return await asyncio.wait_for(col.run(once=True, idle_exit=0.5), 30)
        finally:
            await col.close_nats()

    try:
        stats = asyncio.run(go())
    finally:
        col.close()
    assert len(seen) == 2 and seen[0] is not seen[1], "the collector must connect again"
    assert seen[0].is_closed, "the half-set-up connection must be closed, not leaked"
    assert stats["messages"] == 20 and stats["nats_errors"] >= 1
    assert counts(tmp_path / "h.duckdb")["hook_runs"] == 20


def test_once_gives_up_when_jetstream_never_answers(tmp_path):
    """A server without JetStream: connect works, every stream call fails.
    ``--once`` must end with an error instead of looping forever."""
    # no sync or store limit: a jetstream {} block would enable it
    srv = NatsServer(store_dir=tmp_path / "nats", sync=None, store_limit=None)
    srv._cmd_orig = srv._cmd
    srv._cmd = lambda ports: [a for a in srv._cmd_orig(ports) if a != "-js"]
    srv.start()
    try:
        cfg = CollectorConfig(nats_url=srv.url, db=str(tmp_path / "h.duckdb"), archive=None, fsync=False,
                              request_timeout=0.5, setup_timeout=2)
        col = Collector(cfg)

        async def go():
            try:
                return await asyncio.wait_for(col.run(once=True, idle_exit=0.2), 20)
            finally:
                await col.close_nats()

        try:
            with pytest.raises(Exception) as ei:
                asyncio.run(go())
        finally:
            col.close()
        assert not isinstance(ei.value, asyncio.TimeoutError), "--once looped instead of giving up"
        assert isinstance(ei.value, CollectorError) and "JetStream enabled" in str(ei.value), ei.value
        assert col.nc is None and col.psub is None
    finally:
        srv.stop()


# ---------------------------------------------------------------- credentials
def test_config_names_the_unreadable_file(tmp_path):
    for opt, kw in (("--nkey", "nkey"), ("--creds", "creds"), ("--tls-ca", "tls_ca")):
        with pytest.raises(CollectorError, match=rf"{tmp_path}/nope\.x .*{opt}"):
            _cfg(tmp_path, **{kw: str(tmp_path / "nope.x")})
    with pytest.raises(CollectorError, match=rf"nkey seed file {tmp_path} cannot be read"):
        _cfg(tmp_path, nkey=str(tmp_path))  # a directory
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(CollectorError, match="both --tls-cert and --tls-key"):
        _cfg(tmp_path, tls_cert=str(tmp_path / "c.pem"))
    with pytest.raises(CollectorError, match="HOOKSCOPE_NATS_PASSWORD"):
        _cfg(tmp_path, user="hookscope-collector")
    with pytest.raises(CollectorError, match="no user"):
        _cfg(tmp_path, password="s3cret")
    with pytest.raises(CollectorError, match="no scheme"):
        _cfg(tmp_path, nats_url="127.0.0.1:4222")
    with pytest.raises(CollectorError, match="cannot be read"):
        NatsAuth(nkey=str(tmp_path / "nope.nk"))
    ok = _cfg(tmp_path, user="u", password="Zq9-secret", tls_ca=str(tmp_path / "c.pem"))
    opts = ok.nats_options()
    assert (opts.user, opts.password, opts.tls_ca, opts.inbox_prefix) == (
        "u", "Zq9-secret", str(tmp_path / "c.pem"), "_INBOX")
    assert "Zq9-secret" not in repr(ok)  # the secret stays out of logs


def _resolved(args):
    """What ``hookscope collect ARGS`` resolves: click (option > env > [collector] via
    default_map > default), then collector.cli._settings."""
    ctx = collect.make_context("collect", list(args))
    return _settings(ctx, ctx.params)


def test_settings_resolve_option_env_config(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith("HOOKSCOPE_"):
            monkeypatch.delenv(k)
    cfg = tmp_path / "h.toml"
    cfg.write_text('[collector]\nuser = "from-config"\npassword = "config-pw"\nnkey = "/cfg.nk"\n'
                   'memory_limit = "1GB"\n')
    db = ["--db", str(tmp_path / "h.duckdb"), "--config", str(cfg)]
    s = _resolved(db)
    assert (s["user"], s["password"], s["nkey"], s["memory_limit"]) == ("from-config", "config-pw",
                                                                         "/cfg.nk", "1GB")
    monkeypatch.setenv("HOOKSCOPE_NATS_PASSWORD", "env-pw")
    monkeypatch.setenv("HOOKSCOPE_NATS_NKEY", "/env.nk")
    s = _resolved([*db, "--user", "opt-user", "--memory-limit", "256MB"])
    assert (s["user"], s["password"], s["nkey"], s["memory_limit"]) == ("opt-user", "env-pw", "/env.nk",
                                                                         "256MB")
    # an agent's password in the environment does not leak into a collector without --user
    cfg.write_text("[collector]\n")
    s = _resolved(db)
    assert s["password"] is None and s["memory_limit"] == DEFAULT_MEMORY_LIMIT


def test_cli_refuses_an_unreadable_nkey_file(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKSCOPE_")}
    env.update(PYTHONPATH=str(ROOT), HOOKSCOPE_CONFIG=str(_empty_config(tmp_path)))
    p = subprocess.run(HOOKSCOPE + ["collect", "--once", "--nats", "nats://127.0.0.1:1", "--db",
                                    str(tmp_path / "h.duckdb"), "--nkey", str(tmp_path / "missing.nk")],
                       env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode != 0
    assert f"{tmp_path}/missing.nk" in p.stderr and "--nkey" in p.stderr, p.stderr


def _empty_config(tmp_path):
    p = tmp_path / "empty.toml"
    p.touch()
    return p


def _gen_auth():
    spec = importlib.util.spec_from_file_location("hookscope_gen_auth_c", ROOT / "deploy/nats/gen_auth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("mode", ["nkey", "password"])
def test_collect_with_generated_authorization(tmp_path, mode):
    """``hookscope collect`` as the generated collector identity: it creates the
    streams and the durable, fetches (on the ``_INBOX`` prefix its permissions
    allow), publishes dead letters and acks; a node identity is refused."""
    gen = _gen_auth()
    conf = gen.generate("gpu1", ["node001"], tmp_path / "auth", mode)
    srv = NatsServer(store_dir=tmp_path / "nats", config=conf.read_text())
    srv.start()
    try:
        node = Node()
        msgs = [hook_message(node)[:3] for _ in range(5)] + [(node_subject(), "bad-1", b"\x0a\xffgarbage")]
        secret = tmp_path / "auth" / ("collector.nk" if mode == "nkey" else "collector.pass")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKSCOPE_")}
        env.update(PYTHONPATH=str(ROOT), HOOKSCOPE_CONFIG=str(_empty_config(tmp_path)))
        if mode == "nkey":
            auth = ["--nkey", str(secret)]
        else:
            auth = ["--user", gen.COLLECTOR_USER]
            env["HOOKSCOPE_NATS_PASSWORD"] = secret.read_text().strip()
        db = tmp_path / "h.duckdb"
        cmd = HOOKSCOPE + ["collect", "--once", "--nats", srv.url, "--db", str(db), "--archive",
                           str(tmp_path / "archive")]
        # first run: creates the streams, nothing to store yet
        p = subprocess.run(cmd + auth, env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        _publish_as_node(srv, gen, tmp_path, mode, msgs)
        p = subprocess.run(cmd + auth, env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        c = counts(db)
        assert c["hook_runs"] == 5 and c["dead_letters"] == 1
        assert "not published" not in p.stderr, "the collector may publish its dead letters"
        no_duplicates(db)
        # rebuild --from stream with the same credentials: an ephemeral consumer, same rows
        rb = tmp_path / "rebuilt.duckdb"
        p = subprocess.run(HOOKSCOPE + ["rebuild", "--from", "stream", "--quiet", "--nats", srv.url, "--db", str(rb)]
                           + auth, env=env, capture_output=True, text=True, timeout=90, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        assert counts(rb)["hook_runs"] == 5 and counts(rb)["dead_letters"] == 1
        # a node's identity is not the collector's: refused, with the server's reason
        node_secret = tmp_path / "auth" / "nodes" / ("node001.nk" if mode == "nkey" else "node001.pass")
        kw = {"nkey": str(node_secret)} if mode == "nkey" else {"user": "node001",
                                                                "password": node_secret.read_text().strip()}
        col = Collector(CollectorConfig(nats_url=srv.url, db=str(tmp_path / "other.duckdb"), archive=None,
                                        fsync=False, request_timeout=1, setup_timeout=2, **kw))

        async def go():
            try:
                await asyncio.wait_for(col.run(once=True, idle_exit=0.2), 20)
            finally:
                await col.close_nats()

        try:
            with pytest.raises(CollectorError, match="ermissions violation"):
                asyncio.run(go())
        finally:
            col.close()
    finally:
        srv.stop()


def node_subject():
    return C.subject(C.SIGNAL_SPANS, "gpu1", "node001")


def _publish_as_node(srv, gen, tmp_path, mode, msgs):
    """Publish like node001's agent: its own identity and inbox prefix."""
    from emitter import natsio

    sec = tmp_path / "auth" / "nodes" / ("node001.nk" if mode == "nkey" else "node001.pass")
    kw = {"nkey_seed": str(sec)} if mode == "nkey" else {"user": "node001",
                                                         "password": sec.read_text().strip()}
    opts = natsio.NatsOptions(servers=srv.url, inbox_prefix=C.inbox_prefix("node001"), **kw)

    async def go():
        nc = await natsio.connect(opts)
        try:
            js = nc.jetstream(timeout=5)
            for subj, mid, payload in msgs:
                await js.publish(subj, payload, headers={C.HDR_MSG_ID: mid, C.HDR_SCHEMA: "1"})
        finally:
            await natsio.close(nc)

    asyncio.run(asyncio.wait_for(go(), 30))


# ---------------------------------------------------------------- memory
def test_memory_limit_is_applied_and_configurable(nats_server, tmp_path):
    node = Node()
    publish(nats_server.url, [hook_message(node)[:3] for _ in range(5)])
    collect_once(nats_server.url, tmp_path / "a.duckdb", None, memory_limit="64MB")
    assert counts(tmp_path / "a.duckdb")["hook_runs"] == 5
    from collector.store import Store

    default_mib = int(DEFAULT_MEMORY_LIMIT.removesuffix("MiB"))
    assert 1024 <= default_mib <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 / 2**20 + 1024
    for limit, want_mib in (("64MB", 64e6 / 2**20), (DEFAULT_MEMORY_LIMIT, default_mib)):
        st = Store(tmp_path / f"s{int(want_mib)}.duckdb", memory_limit=limit)
        try:
            got = st.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        finally:
            st.close(snapshot=False)
        # DuckDB reports in its own units (61.0 MiB for 64MB, 11.7 GiB for 12000MiB)
        assert abs(_mib(got) - want_mib) < max(2, want_mib / 100), got
    assert _cfg(tmp_path).memory_limit == DEFAULT_MEMORY_LIMIT
    assert _cfg(tmp_path, memory_limit="none").memory_limit is None
    with pytest.raises(CollectorError, match="not a size"):
        _cfg(tmp_path, memory_limit="lots")
    with pytest.raises(duckdb.Error):  # sanity: the setting really is DuckDB's
        duckdb.connect().execute("SET memory_limit = 'lots'")


def test_default_memory_limit_is_half_of_the_ram_or_of_the_cgroup_limit(tmp_path):
    """DuckDB sizes itself from the machine's RAM; under systemd MemoryMax= or a
    container limit that would get the collector OOM-killed instead."""
    from collector.config import default_memory_limit

    phys_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    v2 = tmp_path / "memory.max"
    v2.write_text("max\n")
    assert default_memory_limit((str(v2),)) == f"{max(1024, phys_mib // 2)}MiB"
    v2.write_text(str(4 << 30) + "\n")  # MemoryMax=4G
    assert default_memory_limit((str(v2),)) == "2048MiB"
    v2.write_text(str(1 << 30))
    assert default_memory_limit((str(v2),)) == "1024MiB"  # never below 1 GiB
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text(str(9223372036854771712))  # cgroup v1's "no limit"
    assert default_memory_limit((str(tmp_path / "absent"), str(v1))) == f"{max(1024, phys_mib // 2)}MiB"


def _mib(text: str) -> float:
    num, unit = text.split()
    return float(num) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_an_invalidated_store_stops_the_collector_with_a_clear_error(nats_server, tmp_path, monkeypatch):
    """DuckDB invalidates a database when a commit fails while flushing (the
    soak hit it out of memory); every later statement fails.  The collector
    must stop and say so, not retry the batch for ever, and must ack nothing
    it did not store: a restarted collector then stores everything once."""
    from collector.store import Store, StoreError

    node = Node("fatal01")
    publish(nats_server.url, [hook_message(node)[:3] for _ in range(6)])
    real_commit = Store.commit
    calls = []

    def commit(self, tables, last_seq):
        calls.append(last_seq)
        if len(calls) > 1:
            raise duckdb.FatalException("FATAL Error: Failed: database has been invalidated because of a "
                                        "previous fatal error.\nOriginal error: \"Failed to flush table journal "
                                        "during commit: failed to allocate data of size 256.0 KiB\"")
        return real_commit(self, tables, last_seq)

    monkeypatch.setattr(Store, "commit", commit)
    db = tmp_path / "h.duckdb"
    with pytest.raises(StoreError) as err:
        collect_once(nats_server.url, db, None, batch=2, memory_limit="64MB")
    msg = str(err.value)
    assert str(db) in msg and "invalidated" in msg and "restart the collector" in msg
    assert "--memory-limit 64MB" in msg and "nothing is lost" in msg
    # the first batch, the fatal one, and at most the one already in flight behind it
    assert len(calls) <= 3, f"kept retrying an invalidated store: {calls}"
    monkeypatch.setattr(Store, "commit", real_commit)
    collect_once(nats_server.url, db, None, batch=2, ack_wait=1.0)  # the naked batches come back
    assert counts(db)["hook_runs"] == 6
    no_duplicates(db)
