"""Connection options and stream set-up against a real nats-server."""

import asyncio
import os
import time

import pytest

from emitter import contract as c
from emitter import natsio
from emitter import EmitterError
from emitter.exporter import JetStreamPublisher, NatsSpanExporter


def test_options_are_validated_with_clear_messages(tmp_path):
    with pytest.raises(natsio.NatsConfigError, match="retry forever"):
        natsio.NatsOptions(max_reconnect_attempts=0)
    with pytest.raises(natsio.NatsConfigError, match="creds file .*nope.creds"):
        natsio.NatsOptions(creds=str(tmp_path / "nope.creds"))
    with pytest.raises(natsio.NatsConfigError, match="no scheme"):
        natsio.NatsOptions(servers="localhost:4222")
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(natsio.NatsConfigError, match="both a certificate and a key"):
        natsio.NatsOptions(tls_key=str(key))
    o = natsio.NatsOptions(servers="nats://a:1, nats://b:2", user="u", password="p")
    kw = o.connect_kwargs()
    assert kw["servers"] == ["nats://a:1", "nats://b:2"] and kw["max_reconnect_attempts"] == 3
    assert kw["user"] == "u" and "tls" not in kw


def test_ensure_streams_creates_then_verifies(nats_server):
    async def go():
        nc = await natsio.connect(natsio.NatsOptions(servers=nats_server.url))
        try:
            js = nc.jetstream()
            first = await natsio.ensure_streams(js)
            again = await natsio.ensure_streams(js)
            cfg = again[c.STREAM_NAME].config
            assert set(first) == {c.STREAM_NAME, c.DLQ_STREAM_NAME}
            assert getattr(cfg.storage, "value", cfg.storage) == "file" and cfg.duplicate_window == c.STREAM_SETTINGS["duplicate_window_s"]
            assert cfg.max_age == c.STREAM_SETTINGS["max_age_s"] and cfg.max_bytes == c.STREAM_SETTINGS["max_bytes"]
            assert set(cfg.subjects) == set(c.STREAM_SUBJECTS + c.HEADS_SUBJECTS)
            # drifted but updatable settings are put back
            await js.update_stream(natsio.stream_config(c.STREAM_NAME, c.STREAM_SUBJECTS).evolve(max_age=3 * 3600.0))
            fixed = await natsio.ensure_streams(js)
            assert fixed[c.STREAM_NAME].config.max_age == c.STREAM_SETTINGS["max_age_s"]
            with pytest.raises(natsio.NatsConfigError):
                await natsio.ensure_streams(js, replicas=0)
        finally:
            await nc.close()

    asyncio.run(go())


def test_stream_with_wrong_storage_is_refused_with_advice(nats_server):
    from nats.js.api import StorageType

    async def go():
        nc = await natsio.connect(natsio.NatsOptions(servers=nats_server.url))
        try:
            js = nc.jetstream()
            await js.add_stream(natsio.stream_config(c.STREAM_NAME, c.STREAM_SUBJECTS).evolve(
                storage=StorageType.MEMORY, max_bytes=1 << 20))
            with pytest.raises(natsio.StreamMismatch, match="nats stream rm HOOKSCOPE"):
                await natsio.ensure_streams(js)
        finally:
            await nc.close()

    asyncio.run(go())


def test_unreachable_server_fails_fast():
    opts = natsio.NatsOptions(servers="nats://127.0.0.1:9", connect_timeout=0.5, max_reconnect_attempts=1)
    t = time.monotonic()
    with pytest.raises(natsio.NatsUnavailable, match="127.0.0.1:9"):
        asyncio.run(natsio.connect(opts))
    assert time.monotonic() - t < 3


def test_exporter_never_raises_and_respects_deadline_when_nats_is_down():
    from emitter import otlp
    from tests.agent.test_otlp import hook_records

    pub = JetStreamPublisher(natsio.NatsOptions(servers="nats://127.0.0.1:9", connect_timeout=0.3,
                                                max_reconnect_attempts=1, request_timeout=0.5))
    ex = NatsSpanExporter(pub, timeout=0.5)
    try:
        spans = otlp.sdk_spans(otlp.trace_request(hook_records()))
        t = time.monotonic()
        assert ex.export(spans).name == "FAILURE"
        assert time.monotonic() - t < 3 and "127.0.0.1:9" in ex.last_error
        assert ex.force_flush() is True
        with pytest.raises(EmitterError):
            pub.publish("hookscope.spans.c1.n1", b"x", "id", c.CONTENT_TYPE_TRACES, 0.3)
    finally:
        ex.shutdown()
        pub.close()
    assert ex.export(spans).name == "FAILURE"  # after shutdown: still no exception


def test_exporter_publishes_with_msg_id_and_dedupes(nats_server):
    from tests.agent.agentkit import stream_messages

    from emitter import otlp
    from tests.agent.test_otlp import HOOK, hook_records

    pub = JetStreamPublisher(natsio.NatsOptions(servers=nats_server.url))
    ex = NatsSpanExporter(pub)
    try:
        spans = otlp.sdk_spans(otlp.trace_request(hook_records()))
        assert ex.export(spans).name == "SUCCESS" and not ex.last_ack.duplicate
        assert ex.export(spans).name == "SUCCESS" and ex.last_ack.duplicate
    finally:
        ex.shutdown()
        pub.close()
    (m,) = stream_messages(nats_server.url)
    assert m.subject == "hookscope.spans.c1.n1"
    assert m.headers[c.HDR_MSG_ID] == c.message_id("c1", "n1", "spans",
                                                   otlp.records_key(otlp.decode_trace(m.data)))
    assert HOOK not in m.headers[c.HDR_MSG_ID]  # not guessable from the hook ID
    assert m.headers[c.HDR_SCHEMA] == str(c.SCHEMA_VERSION)
    assert m.headers[c.HDR_CONTENT_TYPE] == c.CONTENT_TYPE_TRACES


# ---------------------------------------------------------------- issue 13: one NatsAuth
def test_nats_auth_precedence_argument_env_section():
    from emitter.natsauth import NatsAuth

    section = {"creds": "/sec.creds", "user": "secuser", "password": "secpw", "nats": "nats://s:1"}
    env = {"HOOKSCOPE_NATS_USER": "envuser", "HOOKSCOPE_NATS_TOKEN": ""}
    a = NatsAuth.resolve(section, env, creds="/arg.creds")
    assert (a.creds, a.user, a.password, a.token) == ("/arg.creds", "envuser", "secpw", None)
    assert NatsAuth.resolve({}, {}) == NatsAuth()
    assert "secpw" not in repr(NatsAuth.resolve(section, {}))  # secrets stay out of logs
    with pytest.raises(TypeError, match="tls_cafile"):
        NatsAuth.resolve({}, {}, tls_cafile="/x")
    with pytest.raises(AttributeError, match="frozen"):
        a.user = "x"


def test_nats_auth_check_names_the_file_the_key_and_the_fix(tmp_path):
    from emitter.natsauth import NatsAuth, NatsConfigError

    with pytest.raises(NatsConfigError, match=r"NATS creds file .*nope.creds cannot be read \(it does not exist.*\[collector\] creds"):
        NatsAuth(creds=str(tmp_path / "nope.creds"), section="collector").check()
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(NatsConfigError, match=r"both a certificate and a key.*\[agent\] tls_cert"):
        NatsAuth(tls_key=str(key)).check()
    with pytest.raises(NatsConfigError, match="user 'u' has no password"):
        NatsAuth(user="u").check(need_password=True)
    with pytest.raises(NatsConfigError, match="no user: add --user"):
        NatsAuth(password="p").check(need_password=True)
    assert NatsAuth(user="u").check().connect_kwargs() == {"user": "u", "password": ""}
    with pytest.raises(NatsConfigError, match="agent.creds must be a string"):
        NatsAuth(creds=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership check applies to root")
def test_nats_auth_refuses_a_file_another_user_can_swap_as_root(tmp_path):
    from emitter.config import UntrustedError
    from emitter.natsauth import NatsAuth

    d = tmp_path / "keys"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    seed = d / "node.nk"
    seed.write_text("SU...\n")
    os.chown(seed, 65534, 65534)
    with pytest.raises(UntrustedError, match=r"node.nk.*owned by uid 65534"):
        NatsAuth(nkey=str(seed)).check()
    NatsAuth(nkey=str(seed)).check(trust=False)  # presence only (NatsOptions)
    NatsAuth(nkey=str(seed)).check(euid=1000)  # not root: nothing to refuse


def test_nats_options_log_in_through_nats_auth(tmp_path):
    from emitter.natsauth import NatsAuth

    creds = tmp_path / "n.creds"
    creds.write_text("x")
    auth = NatsAuth(creds=str(creds), token="t")
    o = natsio.NatsOptions.from_auth(auth, servers="nats://a:1")
    assert o.auth == auth
    kw = o.connect_kwargs()
    assert kw["user_credentials"] == str(creds) and kw["token"] == "t" and kw["servers"] == ["nats://a:1"]
    assert natsio.NatsConfigError is __import__("emitter.natsauth").natsauth.NatsConfigError
