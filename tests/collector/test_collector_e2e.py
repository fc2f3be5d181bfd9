"""End to end against real nats-server processes and real DuckDB files."""

import asyncio
import os
import signal
import socket
import subprocess
import threading

import duckdb
import pytest

from collector import decode as D
from collector import schema
from collector.config import CollectorConfig
from collector.consumer import Collector
from collector.metrics import serve_metrics
from collector.rebuild import from_archive, from_stream
from emitter import contract as C
from emitter import otlp
from tests.collector.gen import Node, gpu_message, hook_message
from tests.collector.harness import compare_stores, counts, http_get, metric_value, no_duplicates
from tests.helpers import wait_for
from tests.helpers.pipeline import HOOKSCOPE, ROOT, collect_once, publish, start_collect_process
from tests.helpers.servers import NatsCluster

pytestmark = pytest.mark.slow


def workload(n_hooks=30, n_nodes=3, fail_every=7):
    """Messages plus what they must store."""
    nodes = [Node(f"node{i:03d}") for i in range(n_nodes)]
    msgs, hooks, scripts, records = [], 0, 0, 0
    for i in range(n_hooks):
        node = nodes[i % n_nodes]
        fail = 2 if i % fail_every == 0 else None
        subj, mid, payload, recs = hook_message(node, job_id=str(100 + i // n_nodes), fail_index=fail)
        msgs.append((subj, mid, payload))
        hooks += 1
        scripts += 3 if fail is not None else 8
        records += len(recs)
    for node in nodes:
        subj, mid, payload, _ = gpu_message(node)
        msgs.append((subj, mid, payload))
        rec = node.node_event()
        msgs.append((C.subject(C.SIGNAL_SPANS, node.cluster, node.node),
                     C.message_id(node.cluster, node.node, C.SIGNAL_SPANS, rec[C.R_HASH][:16]),
                     otlp.encode_trace([rec])))
        records += 1
    expect = {"hook_runs": hooks, "script_runs": scripts, "journal": records,
              "gpu_samples": 8 * n_nodes, "node_events": n_nodes}
    return msgs, expect


def assert_expected(db, expect):
    got = counts(db)
    for t, n in expect.items():
        assert got[t] == n, (t, got[t], n)
    no_duplicates(db)
    return got


def test_collect_exact_counts_duplicates_and_replay(nats_server, tmp_path):
    msgs, expect = workload()
    publish(nats_server.url, msgs)
    # the same messages again: half with the same Nats-Msg-Id (JetStream drops
    # them), half with new IDs (stored twice in the stream: the store dedupes)
    publish(nats_server.url, msgs[:10] + [(s, (m or "") + ".again", p) for s, m, p in msgs[10:20]])
    db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
    stats = collect_once(nats_server.url, db, arch)
    assert stats["messages"] == len(msgs) + 10
    got = assert_expected(db, expect)
    assert got["dead_letters"] == 0
    # replay: a second consumer reading from sequence 1 into the same file
    collect_once(nats_server.url, db, arch, instance="replay", durable="replay")
    assert counts(db) == dict(got, ingest_state=2)
    # archive union deduped by key equals the store
    rebuilt = tmp_path / "rebuilt.duckdb"
    from_archive(str(arch), str(rebuilt), progress=False)
    assert compare_stores(db, rebuilt) == {}
    # the CLI: progress on stderr, counts on stdout, same result
    cli_db = tmp_path / "cli.duckdb"
    r = subprocess.run([*HOOKSCOPE, "rebuild", "--db", str(cli_db), "--archive", str(arch)], cwd=str(ROOT),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "rebuild from archive: 100%" in r.stderr and f"hook_runs={expect['hook_runs']}" in r.stdout
    assert compare_stores(db, cli_db) == {}
    r = subprocess.run([*HOOKSCOPE, "rebuild", "--db", str(cli_db), "--archive", str(tmp_path / "nope")],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _bad_messages():
    node = Node("bad01")
    spans = C.subject(C.SIGNAL_SPANS, node.cluster, node.node)
    good_subj, _, good, recs = hook_message(node, n_scripts=2)
    req = otlp.trace_request(recs)
    req.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x02" * 8
    bad_ids = req.SerializeToString()
    req = otlp.trace_request(recs)
    for kv in req.resource_spans[0].resource.attributes:
        if kv.key == C.A_SERVICE_NAME:
            kv.value.string_value = "someone-else"
    foreign = req.SerializeToString()
    req = otlp.trace_request(recs)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    keep = [kv for kv in span.attributes if kv.key != C.A_RECORDS]
    del span.attributes[:]
    span.attributes.extend(keep)
    missing = req.SerializeToString()
    _, old = Node("bad02").hook(ts=10**9, n_scripts=1)
    _, new = Node("bad03").hook(n_scripts=1)
    _, typed = Node("bad04").hook(n_scripts=1)
    typed[2] = dict(typed[2], exit_code="zero")

    def own(recs):
        return C.subject(C.SIGNAL_SPANS, recs[0][C.R_CLUSTER], recs[0][C.R_NODE])

    return {
        D.DL_MALFORMED: (spans, None, b"\x0a\x05\xff\xff\xff"),
        D.DL_NOT_OURS: (spans, None, foreign),
        D.DL_MISSING: (spans, None, missing),
        D.DL_OVERSIZED: (spans, None, b"\x0a" * 16000),  # over the collector's limit below
        # each node on its own subject (identity from credentials)
        D.DL_BAD_TIMESTAMP: (own(old), None, otlp.encode_trace(old)),
        D.DL_TOO_NEW: (own(new), None, otlp.encode_trace([dict(r, v=C.SCHEMA_VERSION + 1) for r in new])),
        D.DL_BAD_IDS: (spans, None, bad_ids),
        D.DL_BAD_RECORD: (own(typed), None, otlp.encode_trace(typed)),
        # nodeA's credentials, nodeB's records: never stored as nodeB
        D.DL_IDENTITY: (C.subject(C.SIGNAL_SPANS, node.cluster, "nodeA"), None, good),
        D.DL_BAD_SUBJECT: None,  # not on the stream's subjects: cannot reach the collector
    }


def test_dead_letter_every_class_through_nats(nats_server, tmp_path):
    bad = _bad_messages()
    msgs, expect = workload(n_hooks=6)
    oversized_payload = bad[D.DL_OVERSIZED][2]
    sendable = [v for v in bad.values() if v is not None]
    # interleave bad and good: bad input must not block or lose the good
    mixed = []
    for i, m in enumerate(msgs):
        mixed.append(m)
        if i < len(sendable):
            mixed.append(sendable[i])
    mixed += sendable[len(msgs):]
    publish(nats_server.url, mixed)
    db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
    limit = len(oversized_payload) - 1000  # the good hook messages of workload() are smaller
    assert max(len(p) for _, _, p in msgs) < limit
    stats = collect_once(nats_server.url, db, arch, max_message_bytes=limit)
    want = sorted(r for r, v in bad.items() if v is not None)
    con = duckdb.connect(str(db), read_only=True)
    reasons = sorted(r for (r,) in con.execute("SELECT reason FROM dead_letters").fetchall())
    payloads = con.execute("SELECT reason, payload, size, subject FROM dead_letters").fetchall()
    con.close()
    assert reasons == want
    for reason, payload, size, subj in payloads:
        assert payload == bad[reason][2] and size == len(payload) and subj == bad[reason][0]
    assert stats["dead_letters"] == {r: 1 for r in want}
    # the good messages are all there
    ok = dict(expect)
    ok["journal"] = expect["journal"]
    assert_expected(db, ok)
    # and every dead letter is on its subject in the DLQ stream
    import nats

    async def dlq():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        info = await js.stream_info(C.DLQ_STREAM_NAME)
        sub = await js.subscribe(f"{C.SUBJECT_DEADLETTER}.>", ordered_consumer=True)
        got = []
        for _ in range(info.state.messages):
            m = await sub.next_msg(timeout=5)
            got.append((m.subject, m.headers.get("Hookscope-Deadletter-Reason")))
        await nc.close()
        return info.state.messages, got

    n, got = asyncio.run(dlq())
    assert n == len(want)
    assert sorted(got) == sorted((C.deadletter_subject(r), r) for r in want)


def test_kill9_mid_batch_then_restart_exact_counts(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=1000, n_nodes=50, fail_every=1000)
    publish(nats_server.url, msgs)
    db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
    port = _free_port()
    p = start_collect_process(nats_server.url, db, arch, extra=["--batch", "50"],
                              metrics=f"127.0.0.1:{port}")
    try:
        def started():
            try:
                return metric_value(http_get(f"http://127.0.0.1:{port}/metrics"),
                                    "hookscope_collector_messages_total") >= 100
            except OSError:
                return False
        wait_for(started, 60, what="the collector to commit some batches")
        # readers: the live file is locked, the snapshot opens read-only
        with pytest.raises(duckdb.Error):
            duckdb.connect(str(db), read_only=True)
        wait_for(lambda: os.path.exists(schema.snapshot_path(str(db))), 10, what="a snapshot")
        con = duckdb.connect(schema.snapshot_path(str(db)), read_only=True)
        assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] > 0
        con.close()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    partial = counts(db)["hook_runs"]
    assert partial < 1000, "killed too late to test anything"
    # what the killed process had fetched comes back after ack_wait (5 s here)
    collect_once(nats_server.url, db, arch, instance="p1", ack_wait=5.0)
    assert_expected(db, expect)
    rebuilt = tmp_path / "rebuilt.duckdb"
    from_archive(str(arch), str(rebuilt), progress=False)
    assert compare_stores(db, rebuilt) == {}


def test_sigterm_finishes_batch_acks_and_exits(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=1000, n_nodes=20, fail_every=1000)
    publish(nats_server.url, msgs)
    db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
    port = _free_port()
    p = start_collect_process(nats_server.url, db, arch, extra=["--batch", "50"], metrics=f"127.0.0.1:{port}")
    try:
        wait_for(lambda: _messages(port) >= 50, 60, what="first commits")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode()[-2000:]
    assert b"stored" in err
    done = counts(db)
    # what was committed was acked: a fresh run stores exactly the rest
    collect_once(nats_server.url, db, arch, instance="p1", ack_wait=5.0)
    assert_expected(db, expect)
    assert done["hook_runs"] <= expect["hook_runs"]


def _messages(port):
    try:
        return metric_value(http_get(f"http://127.0.0.1:{port}/metrics"), "hookscope_collector_messages_total")
    except OSError:
        return 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_in_thread(cfg):
    col = Collector(cfg)
    loop = asyncio.new_event_loop()
    result = {}

    def main():
        async def go():
            try:
                result["stats"] = await col.run()
            finally:
                await col.close_nats()
        loop.run_until_complete(go())

    t = threading.Thread(target=main, daemon=True)
    t.start()

    def stop():
        loop.call_soon_threadsafe(col.stop)
        t.join(30)
        col.close()
        return result.get("stats")
    return col, stop


def test_nats_restart_mid_ingest_exact_counts(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=400, n_nodes=10)
    half = len(msgs) // 2
    publish(nats_server.url, msgs[:half])
    db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
    col, stop = _run_in_thread(CollectorConfig(nats_url=nats_server.url, db=str(db), archive=str(arch),
                                               instance="r1", batch=20, fsync=False))
    try:
        wait_for(lambda: col.metrics.snapshot()["messages"] >= 20, 30, what="first batch")
        nats_server.restart()
        publish(nats_server.url, msgs[half:])
        wait_for(lambda: col.metrics.snapshot()["messages"] >= len(msgs), 60, what="all messages")
    finally:
        stop()
    assert_expected(db, expect)


def test_rebuild_from_archive_and_stream_equal_live(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=40)
    bad = _bad_messages()
    msgs += [bad[D.DL_MALFORMED], bad[D.DL_BAD_TIMESTAMP]]
    publish(nats_server.url, msgs)
    publish(nats_server.url, [(s, (m or "x") + ".dup", p) for s, m, p in msgs[:5]])
    db, arch = tmp_path / "live.duckdb", tmp_path / "archive"
    collect_once(nats_server.url, db, arch, batch=16)
    assert counts(db)["dead_letters"] == 2
    a = tmp_path / "from-archive.duckdb"
    from_archive(str(arch), str(a), progress=False)
    s = tmp_path / "from-stream.duckdb"
    res = from_stream(nats_server.url, str(s), progress=False)
    assert res["messages"] == len(msgs) + 5
    assert compare_stores(db, a) == {}
    assert compare_stores(db, s) == {}
    assert counts(a)["hook_runs"] == expect["hook_runs"]


def test_two_collectors_share_one_durable(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=600, n_nodes=30, fail_every=1000)
    publish(nats_server.url, msgs)
    arch = tmp_path / "archive"  # shared; file names carry the instance name
    procs = [start_collect_process(nats_server.url, tmp_path / f"c{i}.duckdb", arch, name=f"c{i}",
                                   extra=["--once", "--batch", "20"]) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    split = [counts(tmp_path / f"c{i}.duckdb")["hook_runs"] for i in range(2)]
    assert sum(split) == expect["hook_runs"], split  # each message went to exactly one
    assert all(n > 0 for n in split), split
    con = duckdb.connect()
    g = str(arch / "raw" / "**" / "*.parquet")
    n, distinct = con.execute(f"SELECT count(*), count(DISTINCT stream_seq) FROM read_parquet('{g}')").fetchone()
    assert n == distinct == len(msgs)  # archived exactly once in the union
    union = tmp_path / "union.duckdb"
    from_archive(str(arch), str(union), progress=False)
    assert_expected(union, expect)


def test_three_node_cluster_r3_kill_one_mid_ingest(tmp_path):
    cluster = NatsCluster(tmp_path / "cluster").start()
    try:
        msgs, expect = workload(n_hooks=300, n_nodes=10)
        half = len(msgs) // 2
        publish(cluster.url, msgs[:half], replicas=3)
        db, arch = tmp_path / "h.duckdb", tmp_path / "archive"
        col, stop = _run_in_thread(CollectorConfig(nats_url=cluster.url, db=str(db), archive=str(arch),
                                                   instance="k1", batch=20, replicas=3, fsync=False))
        try:
            wait_for(lambda: col.metrics.snapshot()["messages"] >= 20, 30, what="first batch")
            cluster.servers[0].kill()  # SIGKILL one of three mid-ingest
            publish(",".join(s.url for s in cluster.servers[1:]), msgs[half:], replicas=3)
            wait_for(lambda: col.metrics.snapshot()["messages"] >= len(msgs), 90, what="all messages")
        finally:
            stop()
        assert_expected(db, expect)
    finally:
        cluster.stop()


def test_metrics_endpoint_reports_ingest(nats_server, tmp_path):
    msgs, expect = workload(n_hooks=5)
    publish(nats_server.url, msgs + [_bad_messages()[D.DL_MALFORMED]])
    cfg = CollectorConfig(nats_url=nats_server.url, db=str(tmp_path / "h.duckdb"), archive=None, fsync=False)
    col, stop = _run_in_thread(cfg)
    srv = serve_metrics(col.metrics, "127.0.0.1:0")
    try:
        wait_for(lambda: col.metrics.snapshot()["messages"] >= len(msgs) + 1, 30, what="ingest")
        text = http_get(f"http://127.0.0.1:{srv.server_address[1]}/metrics")
    finally:
        srv.shutdown()
        stop()
    assert metric_value(text, "hookscope_collector_messages_total") == len(msgs) + 1
    assert metric_value(text, "hookscope_collector_spans_total") == 4 * 9 + (1 + 3) + 3  # 1 hook failed at script 2
    assert 'hookscope_collector_dead_letters_total{reason="malformed"} 1' in text
    assert "hookscope_collector_consumer_lag_messages 0" in text
    assert metric_value(text, "hookscope_collector_store_bytes") > 0
    assert 20e6 < metric_value(text, "process_resident_memory_bytes") < 4e9  # this test process's RSS
    assert "hookscope_collector_commit_seconds_count" in text


def test_cli_collect_embedded_default(tmp_path):
    """No --nats: the embedded nats-server starts next to the DB and stops on exit."""
    db = tmp_path / "store" / "h.duckdb"
    r = subprocess.run([*HOOKSCOPE, "collect", "--db", str(db), "--once",
                        "--nats-port", "0"], capture_output=True, text=True, timeout=60,
                       cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert "embedded nats-server" in r.stderr and "stored 0 messages" in r.stderr
    assert (tmp_path / "store" / "nats" / "jetstream").is_dir()
    assert counts(db)["hook_runs"] == 0
    out = subprocess.run([*HOOKSCOPE, "collect", "--help"], capture_output=True, text=True,
                         cwd=str(ROOT))
    assert "Example:" in out.stdout


def test_cli_serve_runs_nats_collector_and_dashboard(tmp_path):
    """`hookscope serve`: embedded NATS + collector + dashboard; SIGTERM stops all three."""
    import re

    db = tmp_path / "h.duckdb"
    p = subprocess.Popen([*HOOKSCOPE, "serve", "--db", str(db), "--nats-port", "0", "--port", "0"],
                         cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        def read_until(pat):
            while True:
                line = p.stderr.readline()
                if not line:
                    raise AssertionError("serve exited: " + "".join(lines))
                lines.append(line)
                m = re.search(pat, line)
                if m:
                    return m
        url = read_until(r"listening on (nats://\S+)").group(1)
        m = read_until(r"dashboard on (http://\S+)|dashboard not")
        msgs, expect = workload(n_hooks=4)
        publish(url, msgs)
        snap = schema.snapshot_path(str(db))

        def in_snapshot():
            try:
                con = duckdb.connect(snap, read_only=True)
            except duckdb.Error:
                return False
            try:
                # every table, not just hook_runs: GPU messages may be in a later batch
                return all(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == n
                           for t, n in expect.items())
            finally:
                con.close()
        wait_for(in_snapshot, 30, what="the hooks in the published snapshot")
        # the dashboard (if installed) answers while the collector holds the DB
        if m.group(1):
            assert "<html" in http_get(m.group(1), timeout=10).lower()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, "".join(lines) + err
    assert "stored" in err
    assert_expected(db, expect)


def test_rows_the_store_refuses_are_isolated_and_dead_lettered(nats_server, tmp_path, monkeypatch):
    """A row that passes decoding but that DuckDB refuses must not block the stream."""
    from collector.store import Store

    node = Node("poison01")
    good = [hook_message(node)[:3] for _ in range(5)]
    poison = hook_message(node, context="POISON")[:3]
    publish(nats_server.url, good[:2] + [poison] + good[2:])
    real = Store.commit

    def commit(self, tables, last_seq):
        hr = tables.get("hook_runs")
        if hr is not None and "POISON" in hr.column("context").to_pylist():
            raise duckdb.ConstraintException("Constraint Error: simulated refusal")
        return real(self, tables, last_seq)

    monkeypatch.setattr(Store, "commit", commit)
    db = tmp_path / "h.duckdb"
    stats = collect_once(nats_server.url, db, tmp_path / "archive", batch=10)
    assert stats["messages"] == 6 and stats["dead_letters"] == {D.DL_STORE_REJECTED: 1}
    got = counts(db)
    assert got["hook_runs"] == 5 and got["dead_letters"] == 1
    # the archive holds what the store holds (the refused batch's files were withdrawn)
    monkeypatch.setattr(Store, "commit", real)
    rebuilt = tmp_path / "rebuilt.duckdb"
    from_archive(str(tmp_path / "archive"), str(rebuilt), progress=False)
    assert compare_stores(db, rebuilt) == {}
