"""NATS authentication, TLS and per-node publish permissions, against a real
nats-server configured with the authorization that deploy/nats/gen_auth.py
generates.  Raw nats-py here; tests/hardening/test_security_agent.py goes
through the agent's own connect options."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.servers import NatsServer
from emitter import contract
from tests.hardening.secure import client_tls, connect, load_gen_auth, make_pki, run, tls_block

CLUSTER = "gpu1"
NODES = ["node001", "node002"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _server(tmp, pki, mode: str, tls: bool):
    gen = load_gen_auth()
    conf = gen.generate(CLUSTER, NODES, tmp / "auth", mode)
    text = conf.read_text() + (tls_block(pki) if tls else "")
    srv = NatsServer(store_dir=tmp / "nats", config=text)
    srv.start()
    return srv, gen


class Env:
    def __init__(self, srv, gen, auth_dir, mode, pki, tls):
        self.srv, self.gen, self.auth_dir, self.mode, self.pki, self.tls = srv, gen, auth_dir, mode, pki, tls

    def creds(self, who: str) -> dict:
        """nats-py connect kwargs for a node name or 'collector'."""
        ext = ".nk" if self.mode == "nkey" else ".pass"
        path = self.auth_dir / (f"collector{ext}" if who == "collector" else f"nodes/{who}{ext}")
        secret = path.read_text().strip()
        kw = {}
        if self.mode == "nkey":
            kw["nkeys_seed_str"] = secret
        else:
            kw.update(user=self.gen.COLLECTOR_USER if who == "collector" else who, password=secret)
        if who != "collector":
            kw["inbox_prefix"] = self.gen.inbox_prefix(who)
        if self.tls:
            kw["tls"] = client_tls(self.pki)
            kw["tls_hostname"] = "localhost"
        return kw


@pytest.fixture(params=[("nkey", True), ("password", False)], ids=["nkey+mtls", "password"],
                scope="module")
def env(request, tmp_path_factory, pki):
    mode, tls = request.param
    tmp = tmp_path_factory.mktemp(f"secure-{mode}")
    srv, gen = _server(tmp, pki, mode, tls)
    try:
        e = Env(srv, gen, tmp / "auth", mode, pki, tls)
        run(_make_stream(e))
        yield e
    finally:
        srv.stop()


async def _make_stream(env: Env):
    from nats.js.api import StreamConfig

    nc = await connect(env.srv.url, **env.creds("collector"))
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(StreamConfig(name=contract.STREAM_NAME, subjects=list(contract.STREAM_SUBJECTS)))
    finally:
        await nc.close()


async def _count(env: Env, subject: str) -> int:
    nc = await connect(env.srv.url, **env.creds("collector"))
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(contract.STREAM_NAME, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))
    finally:
        await nc.close()


def test_unauthenticated_client_is_refused(env):
    async def go():
        kw = {"tls": client_tls(env.pki), "tls_hostname": "localhost"} if env.tls else {}
        with pytest.raises(Exception) as ei:
            nc = await connect(env.srv.url, **kw)
            await nc.close()
        assert "authorization" in str(ei.value).lower() or "auth" in repr(ei.value).lower()

    run(go())


def test_wrong_secret_is_refused(env):
    async def go():
        kw = env.creds("node001")
        if env.mode == "nkey":
            kw["nkeys_seed_str"] = env.gen.new_nkey_seed()  # a valid key the server does not know
        else:
            kw["password"] = "not-the-password"
        with pytest.raises(Exception) as ei:
            nc = await connect(env.srv.url, **kw)
            await nc.close()
        assert "authorization" in str(ei.value).lower()

    run(go())


# Only the TLS variant has something to refuse here: no skipped twin under CI.
@pytest.mark.parametrize("env", [("nkey", True)], ids=["nkey+mtls"], indirect=True)
def test_tls_is_required_and_client_cert_verified(env):
    assert env.tls

    async def go():
        kw = env.creds("node001")
        kw.pop("tls"), kw.pop("tls_hostname")
        with pytest.raises(Exception):  # plaintext to a TLS-required server
            nc = await connect(env.srv.url, **kw)
            await nc.close()
        kw["tls"] = client_tls(env.pki, with_cert=False)
        kw["tls_hostname"] = "localhost"
        with pytest.raises(Exception):  # TLS but no client certificate (verify: true)
            nc = await connect(env.srv.url, **kw)
            await nc.close()

    run(go())


def test_node_publishes_its_own_subjects_and_collector_consumes(env):
    subj = contract.subject(contract.SIGNAL_SPANS, CLUSTER, "node001")

    async def go():
        before = await _count(env, subj)
        nc = await connect(env.srv.url, **env.creds("node001"))
        try:
            js = nc.jetstream(timeout=5)
            ack = await js.publish(subj, b"span-bytes", headers={contract.HDR_MSG_ID: f"m-{env.mode}-1"})
            assert ack.stream == contract.STREAM_NAME
            ack = await js.publish(contract.subject(contract.SIGNAL_METRICS, CLUSTER, "node001"), b"m")
            assert ack.seq > 0
            # read-only stream check the agent may do
            info = await js.stream_info(contract.STREAM_NAME)
            assert info.config.name == contract.STREAM_NAME
        finally:
            await nc.close()
        assert await _count(env, subj) == before + 1
        # the collector (and only it) consumes with a durable pull consumer
        nc = await connect(env.srv.url, **env.creds("collector"))
        try:
            js = nc.jetstream(timeout=5)
            sub = await js.pull_subscribe(subj, durable=f"sec-{env.mode}")
            msgs = await sub.fetch(1, timeout=5)
            assert msgs[0].data == b"span-bytes"
            await msgs[0].ack_sync(timeout=5)
        finally:
            await nc.close()

    run(go())


def test_node_cannot_publish_as_another_node(env):
    other = contract.subject(contract.SIGNAL_SPANS, CLUSTER, "node002")

    async def go():
        before = await _count(env, other)
        errors: list = []
        nc = await connect(env.srv.url, errors=errors, **env.creds("node001"))
        try:
            js = nc.jetstream(timeout=1.5)
            with pytest.raises(Exception):  # no PubAck ever comes back
                await js.publish(other, b"forged", headers={contract.HDR_MSG_ID: "forged-1"})
            # the deadletter subject and another cluster's subject are refused too
            await nc.publish(contract.deadletter_subject("x"), b"x")
            await nc.publish(contract.subject(contract.SIGNAL_SPANS, "other", "node001"), b"x")
            await nc.flush(timeout=3)
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
        text = " ".join(str(e) for e in errors).lower()
        assert text.count("permissions violation for publish") >= 3, errors
        assert "node002" in text
        assert await _count(env, other) == before

    run(go())


def test_node_cannot_read_the_stream_or_the_collectors_deliveries(env):
    async def go():
        errors: list = []
        nc = await connect(env.srv.url, errors=errors, **env.creds("node001"))
        try:
            await nc.subscribe("hookscope.>")
            await nc.subscribe("_INBOX.>")  # where the collector's pull fetches are delivered
            await nc.flush(timeout=3)
            js = nc.jetstream(timeout=1.5)
            with pytest.raises(Exception):  # consumer creation is the collector's
                await js.pull_subscribe(contract.subject(contract.SIGNAL_SPANS, CLUSTER, "node001"),
                                        durable="thief")
            with pytest.raises(Exception):  # so is deleting the stream
                await js.delete_stream(contract.STREAM_NAME)
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
        text = " ".join(str(e) for e in errors).lower()
        assert "permissions violation for subscription to \"hookscope.>\"" in text, errors
        assert "permissions violation for subscription to \"_inbox.>\"" in text, errors

    run(go())


def test_generated_secrets_are_private(env):
    assert (env.auth_dir.stat().st_mode & 0o777) == 0o700
    for p in env.auth_dir.rglob("*"):
        if p.is_file():
            assert (p.stat().st_mode & 0o077) == 0, p


def test_expand_nodes_ranges():
    gen = load_gen_auth()
    assert gen.expand_nodes("gpu[08-10],ctl") == ["gpu08", "gpu09", "gpu10", "ctl"]
    assert gen.expand_nodes("a,b[1-2]x") == ["a", "b1x", "b2x"]
