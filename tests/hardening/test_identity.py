"""Identity comes from credentials (issue 12.1), attacked as an attacker would:
a real nats-server with deploy/nats/gen_auth.py's per-node NKeys, nodeA holding
only its own seed, the real collector consuming with the collector's seed.

Each attack of the issue is reproduced and must now fail to fool the store:
nodeA's genuine-looking messages naming nodeB (records, GPU metrics'
``host.name``, another cluster), and nodeA pre-publishing nodeB's future
``Nats-Msg-Id``.  Nothing is stored under the claimed identity; every forged
message is kept as evidence in ``dead_letters`` (reason ``identity_mismatch``)
and counted in ``/metrics``; nodeB's genuine messages are all stored.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb
import pytest

from collector.config import CollectorConfig
from collector.consumer import Collector
from collector.decode import DL_IDENTITY
from tests.helpers.servers import NatsServer
from collector.metrics import Metrics
from emitter import contract as C
from emitter import natsio, otlp
from emitter.exporter import JetStreamPublisher, NatsSpanExporter
from tests.agent.agentkit import write_hooks_fast
from tests.collector.gen import Node, gpu_message, hook_message
from tests.hardening.secure import connect, load_gen_auth, run

CLUSTER = "gpu1"


@pytest.fixture
def env(tmp_path):
    gen = load_gen_auth()
    conf = gen.generate(CLUSTER, ["nodeA", "nodeB"], tmp_path / "auth", "nkey")
    srv = NatsServer(store_dir=tmp_path / "nats", config=conf.read_text()).start()
    srv.auth = tmp_path / "auth"
    srv.gen = gen

    async def streams():
        nc = await connect(srv.url, nkeys_seed_str=(srv.auth / "collector.nk").read_text().strip())
        try:
            await natsio.ensure_streams(nc.jetstream(timeout=5), replicas=1)
        finally:
            await nc.close()

    run(streams())
    yield srv
    srv.stop()


def _publish_as(srv, node: str, msgs) -> list:
    """Raw JetStream publishes with ``node``'s seed: [(subject, msg_id, payload)] -> PubAcks."""
    async def go():
        nc = await connect(srv.url, nkeys_seed_str=(srv.auth / f"nodes/{node}.nk").read_text().strip(),
                           inbox_prefix=srv.gen.inbox_prefix(node))
        try:
            js = nc.jetstream(timeout=5)
            acks = []
            for subj, mid, payload in msgs:
                hdrs = {C.HDR_SCHEMA: str(C.SCHEMA_VERSION)}
                if mid:
                    hdrs[C.HDR_MSG_ID] = mid
                acks.append(await js.publish(subj, payload, headers=hdrs))
            return acks
        finally:
            await nc.close()

    return run(go())


def _agent_publisher(srv, node: str) -> JetStreamPublisher:
    """The agent's own publishing path with ``node``'s NKey seed file."""
    opts = natsio.NatsOptions(servers=srv.url, nkey_seed=str(srv.auth / f"nodes/{node}.nk"),
                              inbox_prefix=C.inbox_prefix(node), name=f"hookscope-agent-{node}")
    return JetStreamPublisher(opts, create_streams=False)


def _collect(srv, db: Path, archive: Path | None = None) -> Metrics:
    cfg = CollectorConfig(nats_url=srv.url, db=str(db), archive=str(archive) if archive else None, fsync=False,
                          nkey=str(srv.auth / "collector.nk"))
    metrics = Metrics()
    col = Collector(cfg, metrics)

    async def go():
        try:
            return await col.run(once=True, idle_exit=1.0)
        finally:
            await col.close_nats()

    import asyncio
    try:
        asyncio.run(go())
    finally:
        col.close()
    return metrics


def _rows(db: Path, sql: str):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _own(node: Node) -> str:
    return C.subject(C.SIGNAL_SPANS, CLUSTER, node)


def test_node_cannot_store_records_or_metrics_as_another_node(env, tmp_path):
    victim = Node("nodeB", CLUSTER)
    # 1. genuine hookscope records naming nodeB, on nodeA's own subject
    _, _, forged_hook, _ = hook_message(victim, fail_index=0, output="forged: bad GPU", job_id="777")
    # 2. GPU metrics with host.name=nodeB and a forged XID
    _, _, forged_gpu, _ = gpu_message(victim)
    # 3. records naming nodeA but another cluster
    _, _, forged_cluster, _ = hook_message(Node("nodeA", "othercluster"))
    # 4. a node_event draining nodeB
    ev = Node("nodeB", CLUSTER).node_event(state="DRAIN")
    forged_event = otlp.encode_trace([ev])
    attacks = [(_own("nodeA"), None, forged_hook),
               (C.subject(C.SIGNAL_METRICS, CLUSTER, "nodeA"), None, forged_gpu),
               (_own("nodeA"), None, forged_cluster),
               (_own("nodeA"), None, forged_event)]
    acks = _publish_as(env, "nodeA", attacks)
    assert all(a.seq for a in acks)  # the server took them: only the collector can tell
    # nodeA's own honest hook still goes through
    honest_subj, honest_mid, honest, _ = hook_message(Node("nodeA", CLUSTER))
    _publish_as(env, "nodeA", [(honest_subj, None, honest)])

    db = tmp_path / "h.duckdb"
    metrics = _collect(env, db)

    assert _rows(db, "SELECT count(*) FROM hook_runs WHERE node = 'nodeB' OR cluster <> 'gpu1'") == [(0,)]
    for t in ("script_runs", "gpu_samples", "node_events", "journal"):
        assert _rows(db, f"SELECT count(*) FROM {t} WHERE node = 'nodeB' OR cluster <> 'gpu1'") == [(0,)], t
    assert _rows(db, "SELECT count(*) FROM hook_runs WHERE node = 'nodeA'") == [(1,)]
    dead = _rows(db, "SELECT reason, payload, detail FROM dead_letters ORDER BY stream_seq")
    assert [r for r, _, _ in dead] == [DL_IDENTITY] * 4
    # kept as evidence, byte for byte
    assert [bytes(p) for _, p, _ in dead] == [p for _, _, p in attacks]
    assert "nodeB" in dead[0][2] and "nodeA" in dead[0][2]
    assert "othercluster" in dead[2][2]
    # and counted in /metrics
    assert metrics.snapshot()["dead_letters"] == {DL_IDENTITY: 4}
    assert f'dead_letters_total{{reason="{DL_IDENTITY}"}} 4' in metrics.render()


def test_node_cannot_pre_empt_another_nodes_message_id(env, tmp_path):
    """nodeA publishes, before nodeB does, every Msg-Id it could know of
    nodeB's next message: the old guessable form (even with the right hook ID,
    the only part it had to guess) and nodeB-prefixed content digests.  nodeB's
    genuine message is still stored, the pre-emptions are dead-lettered."""
    victim = Node("nodeB", CLUSTER)
    hook_id = "0123456789abcdef"
    _, recs = victim.hook(hook_id=hook_id, n_scripts=2)
    guessed = [
        C.message_id(CLUSTER, "nodeB", C.SIGNAL_SPANS, hook_id),           # the old scheme
        C.message_id(CLUSTER, "nodeB", C.SIGNAL_SPANS, "0" * 64),          # a digest-shaped ID
    ]
    decoy = hook_message(Node("nodeA", CLUSTER))[2]
    acks = _publish_as(env, "nodeA", [(_own("nodeA"), mid, decoy) for mid in guessed])
    assert not any(a.duplicate for a in acks)
    # nodeA also lies about its own content under its own prefix
    lie = C.message_id(CLUSTER, "nodeA", C.SIGNAL_SPANS, "f" * 64)
    _publish_as(env, "nodeA", [(_own("nodeA"), lie, decoy)])

    # nodeB's agent ships the hook through its real exporter
    pub = _agent_publisher(env, "nodeB")
    ex = NatsSpanExporter(pub)
    try:
        spans = otlp.sdk_spans(otlp.fitted_trace(recs))
        assert ex.export(spans).name == "SUCCESS", ex.last_error
        assert not ex.last_ack.duplicate  # not pre-empted
        # its retry (crash between PubAck and delete) is the only duplicate
        assert ex.export(otlp.sdk_spans(otlp.fitted_trace(recs))).name == "SUCCESS"
        assert ex.last_ack.duplicate
    finally:
        ex.shutdown()
        pub.close()
    # the same for GPU metrics: a guessed timestamp ID of nodeB does not block nodeB
    ts = time.time_ns() - 10**9
    _publish_as(env, "nodeA", [(C.subject(C.SIGNAL_METRICS, CLUSTER, "nodeA"),
                                C.message_id(CLUSTER, "nodeB", C.SIGNAL_METRICS, str(ts)),
                                gpu_message(Node("nodeA", CLUSTER), ts=ts)[2])])

    db = tmp_path / "h.duckdb"
    metrics = _collect(env, db)
    assert _rows(db, "SELECT hook_id, node FROM hook_runs WHERE node = 'nodeB'") == [(hook_id, "nodeB")]
    assert _rows(db, "SELECT count(*) FROM journal WHERE node = 'nodeB'") == [(len(recs),)]
    reasons = [r for (r,) in _rows(db, "SELECT reason FROM dead_letters")]
    assert reasons == [DL_IDENTITY] * 4, reasons
    details = " ".join(d for (d,) in _rows(db, "SELECT detail FROM dead_letters"))
    assert "pre-empt" in details and "content digest" in details
    assert metrics.snapshot()["dead_letters"] == {DL_IDENTITY: 4}


def test_msg_id_is_a_content_digest_of_the_records():
    """Pure: the key is the sha256 of the journal lines, so it names the node's
    content, not a hook ID anyone can learn from a job's span."""
    victim = Node("nodeB", CLUSTER)
    hook_id, recs = victim.hook(n_scripts=1)
    (key, part), = otlp.split_requests(otlp.fitted_trace(recs))
    assert hook_id not in key and len(key) == 64
    assert key == otlp.records_key(part)
    from collector.decode import decode_message
    dec = decode_message(part.SerializeToString(), _own("nodeB"), 1, time.time_ns())
    assert dec.records_digest == key


# ---------------------------------------------------------------- chain heads
def _agent_once(srv, node: str, journal: Path):
    import subprocess

    cmd = [sys.executable, "-m", "emitter.cli", "agent", "--once", "--nats", srv.url, "--journal",
           str(journal), "--gpu", "none", "--node", node, "--cluster", CLUSTER,
           "--nkey", str(srv.auth / f"nodes/{node}.nk")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_agent_publishes_signed_chain_heads_the_collector_keeps(env, tmp_path):
    import nkeys

    from emitter import chainheads
    from emitter.journal import read_records

    journal = tmp_path / "journal"
    write_hooks_fast(journal, 3, node="nodeA", cluster=CLUSTER)
    last = max((r for p in journal.glob("*.jsonl") for r in read_records(p)[0]), key=lambda r: r[C.R_SEQ])
    r = _agent_once(env, "nodeA", journal)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "h.duckdb"
    _collect(env, db, archive=tmp_path / "archive")
    # archived too, so verify can hold the Parquet archive to the heads as well
    files = list((tmp_path / "archive" / "chain_heads").rglob("*.parquet"))
    assert any(f.stat().st_size and "schema" not in f.name for f in files), files
    heads = _rows(db, "SELECT cluster, node, chain, seq, hash, epoch_us(ts), signature, public_key "
                      "FROM chain_heads")
    assert len(heads) == 1
    cl, nd, chain, seq, h, ts_us, sig, key = heads[0]
    assert (cl, nd, chain, seq, h) == (CLUSTER, "nodeA", last[C.R_CHAIN], last[C.R_SEQ], last[C.R_HASH])
    seed = (env.auth / "nodes/nodeA.nk").read_text().strip()
    assert key == nkeys.from_seed(seed.encode()).public_key.decode()  # the node's own NKey
    head = {"cluster": cl, "node": nd, "chain": chain, "seq": seq, "hash": h, "ts": ts_us * 1000,
            "sig": sig, "key": key}
    assert chainheads.verify(head)  # what audit verify checks, from the stored row alone
    assert not chainheads.verify(dict(head, seq=seq - 1))  # an edited row does not verify


def test_forged_and_tampered_heads_are_refused(env, tmp_path):
    import nkeys

    from emitter import chainheads

    seed_a = (env.auth / "nodes/nodeA.nk").read_text().strip()
    kp = nkeys.from_seed(seed_a.encode())
    base = {"cluster": CLUSTER, "node": "nodeB", "chain": "ab" * 8, "seq": 5, "hash": "0" * 64}
    forged = chainheads.sign(base, kp)  # nodeA vouching for nodeB's chain
    mine = chainheads.sign(dict(base, node="nodeA"), kp)
    tampered = dict(mine, seq=99)  # signature no longer covers it
    msgs = []
    for heads in ([forged], [tampered]):
        subj, data, mid = chainheads.message(heads, CLUSTER, "nodeA")
        msgs.append((subj, mid, data))
    _publish_as(env, "nodeA", msgs)
    db = tmp_path / "h.duckdb"
    _collect(env, db)
    assert _rows(db, "SELECT count(*) FROM chain_heads") == [(0,)]
    reasons = [r for (r,) in _rows(db, "SELECT reason FROM dead_letters ORDER BY stream_seq")]
    assert reasons == [DL_IDENTITY, "bad_record"]


def test_signed_heads_show_a_deleted_tail_to_audit_verify(env, tmp_path):
    """The whole path: runner journal -> real agent (nodeA's NKey) -> collector
    -> a store admin deletes the chain's last record -> audit verify names it
    from the signed head (queries/verify.py, its chain-head step)."""
    from queries.verify import verify_chain

    journal = tmp_path / "journal"
    write_hooks_fast(journal, 3, node="nodeA", cluster=CLUSTER)
    assert _agent_once(env, "nodeA", journal).returncode == 0
    db = tmp_path / "h.duckdb"
    _collect(env, db)
    con = duckdb.connect(str(db))
    try:
        clean = verify_chain(con)
        assert clean["ok"] and clean["checked"]["signed_heads"] == 1, clean
        con.execute("DELETE FROM journal WHERE seq = (SELECT max(seq) FROM journal)")
        kinds = {p["kind"] for p in verify_chain(con)["problems"]}
    finally:
        con.close()
    assert "tail_missing" in kinds, kinds
