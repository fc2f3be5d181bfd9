"""The queries over rows made by the real pipeline code: journal records as
the runner writes them (tests/collector/gen.py), encoded by emitter.otlp,
decoded by collector.decode, batched by collector.columns and committed by
collector.store.Store / collector.archive.Archive, so the row shapes the
queries rely on are the collector's, not only the test builder's."""

import time

import pytest

from queries.audit import audit_job
from queries.drains import drains
from queries.source import open_source
from queries.verify import verify_chain
from queries.why import why
from tests.collector import gen


def _gen():
    return gen


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from collector.archive import Archive
    from collector.columns import Batch
    from collector.decode import Decoded, decode_message
    from collector.store import Store

    gen = _gen()
    root = tmp_path_factory.mktemp("pipeline")
    t0 = time.time_ns() - 3600 * 10**9
    nodes = {n: gen.Node(n, "gpu1") for n in ("node001", "node002", "node003")}
    msgs = []
    for k, (name, node) in enumerate(nodes.items()):
        msgs.append(gen.hook_message(node, job_id="1001", n_scripts=3, ts=t0 + k * 10**9))
        fail = 1 if name != "node003" else None
        msgs.append(gen.hook_message(node, job_id="1002", n_scripts=3, fail_index=fail,
                                     ts=t0 + 600 * 10**9 + k * 10**9, output="boom: gpu 3 fell off the bus"))
    batch = Batch("collector")
    for seq, (subject, msg_id, payload, _recs) in enumerate(msgs, 1):
        res = decode_message(payload, subject, seq, t0 + 1200 * 10**9)
        assert isinstance(res, Decoded), res
        batch.add(res, seq, subject, t0 + 1200 * 10**9, payload, msg_id)
    parts, tables = batch.arrow()
    db = str(root / "hookscope.duckdb")
    store = Store(db)
    store.commit(tables, batch.last_seq)
    archive = Archive(root / "archive", fsync=False)
    archive.write(parts, batch.first_seq, batch.last_seq)
    archive.close()
    return store, db, str(root / "archive")


@pytest.mark.parametrize("source", ["snapshot", "archive"])
def test_queries_over_real_pipeline_rows(pipeline, source):
    store, db, archive = pipeline
    if source == "snapshot":
        store.snapshot()  # the collector holds the live file's lock: readers get the snapshot
        con = open_source(db=db, quiet=True)
    else:
        con = open_source(archive=archive)
    d = why(con, "node001")
    c = d["cause"]
    assert (c["script"], c["exit_code"], c["job_id"], c["user"]) == ("/etc/slurm/prolog.d/01-check.sh", 1,
                                                                      "1002", "alice")
    assert "fell off the bus" in c["output"] and c["context"] == "prolog_slurmd"
    assert d["systemic"]["fault"] == "script" and d["systemic"]["count"] == 2
    assert [e["kind"] for e in d["evidence"] if e["table"] == "journal"][0] == "hook_started"
    rows = drains(con)
    assert len(rows) == 1 and rows[0]["nodes"] == ["node001", "node002"]
    job = audit_job(con, "1002")
    assert {r["node"] for r in job} == {"node001", "node002", "node003"}
    assert [r["exit_code"] for r in job if r["node"] == "node003"] == [0, 0, 0]
    v = verify_chain(con)
    assert v["ok"], v["problems"]
    assert v["checked"]["nodes"] == 3
