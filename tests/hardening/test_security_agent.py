"""The real agent process (``hookscope agent --once``) against a nats-server
with the generated per-node authorization: NKey + mutual TLS, and user +
password.  A node ships with its own identity; with another node's name or no
credentials it is refused and keeps its journal (nothing lost)."""

from __future__ import annotations

import subprocess

import pytest

from emitter import contract
from tests.helpers.pipeline import Pipeline, write_scripts
from tests.helpers.servers import NatsServer
from tests.hardening.secure import client_tls, connect, load_gen_auth, make_pki, run, tls_block

CLUSTER = "gpu1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(params=["nkey+mtls", "password"], scope="module")
def server(request, tmp_path_factory, pki):
    mode = "nkey" if request.param.startswith("nkey") else "password"
    tls = request.param.endswith("mtls")
    tmp = tmp_path_factory.mktemp(request.param.replace("+", "-"))
    gen = load_gen_auth()
    conf = gen.generate(CLUSTER, ["node001", "node002"], tmp / "auth", mode)
    srv = NatsServer(store_dir=tmp / "nats", config=conf.read_text() + (tls_block(pki) if tls else ""))
    srv.start()
    try:
        srv.auth_dir, srv.mode, srv.tls, srv.gen = tmp / "auth", mode, tls, gen
        run(_collector_setup(srv, pki))
        yield srv
    finally:
        srv.stop()


def _collector_kw(srv, pki):
    ext = ".nk" if srv.mode == "nkey" else ".pass"
    secret = (srv.auth_dir / f"collector{ext}").read_text().strip()
    kw = {"nkeys_seed_str": secret} if srv.mode == "nkey" else {"user": srv.gen.COLLECTOR_USER, "password": secret}
    if srv.tls:
        kw.update(tls=client_tls(pki), tls_hostname="localhost")
    return kw


async def _collector_setup(srv, pki):
    from emitter import natsio

    nc = await connect(srv.url, **_collector_kw(srv, pki))
    try:
        await natsio.ensure_streams(nc.jetstream(timeout=5), replicas=1)
    finally:
        await nc.close()


async def _purge(srv, pki):
    nc = await connect(srv.url, **_collector_kw(srv, pki))
    try:
        await nc.jetstream(timeout=5).purge_stream(contract.STREAM_NAME)
    finally:
        await nc.close()


def _count(srv, pki, node) -> int:
    async def go():
        nc = await connect(srv.url, **_collector_kw(srv, pki))
        try:
            subj = contract.subject(contract.SIGNAL_SPANS, CLUSTER, node)
            info = await nc.jetstream(timeout=5).stream_info(contract.STREAM_NAME, subjects_filter=subj)
            return int((info.state.subjects or {}).get(subj, 0))
        finally:
            await nc.close()

    return run(go())


def _agent_args(srv, pki, node, identity=None):
    """CLI options for ``hookscope agent`` as node ``node`` using ``identity``'s secret."""
    identity = identity or node
    args, env = [], {}
    if srv.mode == "nkey":
        args += ["--nkey", str(srv.auth_dir / f"nodes/{identity}.nk")]
    else:
        args += ["--user", identity]
        env["HOOKSCOPE_NATS_PASSWORD"] = (srv.auth_dir / f"nodes/{identity}.pass").read_text().strip()
    if srv.tls:
        args += ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]),
                 "--tls-key", str(pki["client_key"])]
    return args + ["--no-create-streams"], env


def _one_hook(tmp_path, srv, node="node001"):
    pl = Pipeline(tmp_path, nats=srv)
    d = write_scripts(tmp_path / "prolog.d", {"10-ok.sh": "exit 0\n"})
    assert pl.run_hook(node, d, 11).returncode == 0
    return pl


def test_agent_ships_with_its_own_credentials(server, pki, tmp_path):
    pl = _one_hook(tmp_path, server)
    before = _count(server, pki, "node001")
    args, env = _agent_args(server, pki, "node001")
    p = pl.agent_once("node001", extra=args, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not pl.pending_files("node001")
    assert _count(server, pki, "node001") == before + 1


def test_agent_posing_as_another_node_is_refused_and_keeps_its_journal(server, pki, tmp_path):
    pl = _one_hook(tmp_path, server, node="node002")
    before = _count(server, pki, "node002")
    args, env = _agent_args(server, pki, "node002", identity="node001")  # node001's key, node002's subject
    p = pl.agent_once("node002", extra=args, env=env, timeout=60)
    assert p.returncode != 0
    assert len(pl.pending_files("node002")) == 1, "a refused publish must not delete the journal file"
    assert _count(server, pki, "node002") == before


def test_agent_without_credentials_is_refused_and_keeps_its_journal(server, pki, tmp_path):
    pl = _one_hook(tmp_path, server)
    extra = ["--no-create-streams"]
    if server.tls:
        extra += ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]),
                  "--tls-key", str(pki["client_key"])]
    p = pl.agent_once("node001", extra=extra, timeout=60)
    assert p.returncode != 0
    assert len(pl.pending_files("node001")) == 1


def test_natsio_connect_options(server, pki):
    """The agent's connect layer (emitter.natsio) with each credential kind."""
    from emitter import natsio

    kw = {}
    if server.mode == "nkey":
        kw["nkey_seed"] = str(server.auth_dir / "nodes/node001.nk")
    else:
        kw.update(user="node001", password=(server.auth_dir / "nodes/node001.pass").read_text().strip())
    if server.tls:
        kw.update(tls_ca=str(pki["ca"]), tls_cert=str(pki["client_cert"]), tls_key=str(pki["client_key"]))
    opts = natsio.NatsOptions(servers=server.url, extra={"inbox_prefix": contract.inbox_prefix("node001")}, **kw)

    async def go():
        nc = await natsio.connect(opts)
        try:
            ack = await nc.jetstream(timeout=5).publish(
                contract.subject(contract.SIGNAL_METRICS, CLUSTER, "node001"), b"x")
            return ack.seq
        finally:
            await natsio.close(nc)

    assert run(go()) > 0
    bad = natsio.NatsOptions(servers=server.url, **({"tls_ca": str(pki["ca"])} if server.tls else {}))
    with pytest.raises(natsio.NatsUnavailable, match="uthoriz"):
        run(natsio.connect(bad))


def test_whole_pipeline_with_the_right_credentials(server, pki, tmp_path):
    """runner -> agent (node001's identity) -> nats-server -> collector (the
    collector identity) -> DuckDB: exact counts, with auth (and mTLS) on."""
    run(_purge(server, pki))  # the module's server holds the other tests' messages
    pl = _one_hook(tmp_path, server)
    pl.snapshot_journals()
    args, env = _agent_args(server, pki, "node001")
    p = pl.agent_once("node001", extra=args, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    ext = ".nk" if server.mode == "nkey" else ".pass"
    secret = server.auth_dir / f"collector{ext}"
    if server.mode == "nkey":
        cargs, cenv = ["--nkey", str(secret)], {}
    else:
        cargs, cenv = ["--user", server.gen.COLLECTOR_USER], {"HOOKSCOPE_NATS_PASSWORD": secret.read_text().strip()}
    if server.tls:
        cargs += ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    c = subprocess.run(pl.collect_cmd(True) + cargs, env=pl.env("collector", cenv), capture_output=True,
                       text=True, timeout=90, cwd=pl.tmp)
    assert c.returncode == 0, c.stdout + c.stderr
    pl.assert_exact()
