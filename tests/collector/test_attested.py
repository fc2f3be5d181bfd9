"""The uid a node's agent attests wrote each record (``hookscope.attested_uid``,
docs/journal.md "Per-owner spools"): decoded from the resource, never from
the records; stored in hook_runs, script_runs and journal; an older store
grows the column on open without losing a row; ``audit`` shows it."""

import time

import duckdb
import pytest
from tests.collector.gen import Node

from collector import schema
from collector.columns import NAMES, Batch
from collector.decode import DeadLetter, decode_message
from collector.store import Store
from emitter import contract as C
from emitter import otlp
from queries.audit import audit_job
from queries.source import open_source

NOW = time.time_ns()


def message(node, uid, **kw):
    _hook, recs = node.hook(n_scripts=2, **kw)
    req = otlp.fitted_trace(recs)
    if uid is not None:
        for rs in req.resource_spans:  # as the agent marks it
            otlp._attrs(rs.resource.attributes, {C.A_ATTESTED_UID: uid})
    return C.subject(C.SIGNAL_SPANS, node.cluster, node.node), req.SerializeToString()


def test_decode_takes_the_uid_from_the_resource_into_every_row():
    subj, payload = message(Node("n1"), 1000, context="prolog_task")
    dec = decode_message(payload, subj, 1, NOW)
    for table in ("hook_runs", "script_runs", "journal"):
        col = NAMES[table].index("attested_uid")
        assert {row[col] for row in dec.rows[table]} == {1000}, table
    subj, payload = message(Node("n1"), None)  # an older agent, direct mode: unmarked
    dec = decode_message(payload, subj, 2, NOW)
    assert {row[NAMES["hook_runs"].index("attested_uid")] for row in dec.rows["hook_runs"]} == {None}


@pytest.mark.parametrize("bad", ["1000", -1, 2**40, True])
def test_a_uid_that_is_not_one_is_dead_lettered(bad):
    subj, payload = message(Node("n1"), bad)
    dec = decode_message(payload, subj, 1, NOW)
    assert isinstance(dec, DeadLetter) and C.A_ATTESTED_UID in dec.detail


def _old_store(path):
    """A store made before attested_uid existed, with one row in it."""
    con = duckdb.connect(str(path))
    for name, body in schema.TABLES.items():
        body = "\n".join(x for x in body.splitlines() if "attested_uid" not in x)
        body = body.rstrip().rstrip(",") if name != "journal" else body
        con.execute(f"CREATE TABLE {name} ({body})")
    con.execute("INSERT INTO journal VALUES ('c', 'n0', '', 1, 'node_event', NULL, 'h', 'p', '{}')")
    con.close()


def test_an_older_store_grows_the_column_and_keeps_its_rows(tmp_path):
    db = tmp_path / "s.duckdb"
    _old_store(db)
    node = Node("n1")
    b = Batch("t")
    for seq, (uid, ctx) in enumerate([(0, "prolog_slurmd"), (1000, "prolog_task")], 1):
        subj, payload = message(node, uid, context=ctx, job_id="77")
        b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, None, node.cluster)
    _parts, tables = b.arrow()
    with Store(db, consumer="t") as st:
        st.commit(tables, b.last_seq)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT attested_uid FROM journal WHERE node = 'n0'").fetchall() == [(None,)]
        got = con.execute("SELECT context, attested_uid FROM hook_runs ORDER BY context").fetchall()
        assert got == [("prolog_slurmd", 0), ("prolog_task", 1000)]
    finally:
        con.close()


def test_audit_shows_user_attested_runs_apart_from_root_ones(tmp_path):
    db = tmp_path / "s.duckdb"
    node = Node("n1")
    b = Batch("t")
    runs = [(0, "prolog_slurmd"), (None, "epilog_slurmd"), (64030, "prolog_slurmctld"),
            (1000, "prolog_task"), (1000, "prolog_slurmd")]  # the last: a user claiming root's Prolog
    for seq, (uid, ctx) in enumerate(runs, 1):
        subj, payload = message(node, uid, context=ctx, job_id="77", ts=NOW - 10**9 * (10 - seq))
        b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, None, node.cluster)
    _parts, tables = b.arrow()
    with Store(db, consumer="t") as st:
        st.commit(tables, b.last_seq)
    con = open_source(db=str(db), quiet=True)
    got = {(r["context"], r["attested"]) for r in audit_job(con, "77")}
    assert got == {("prolog_slurmd", "root"), ("epilog_slurmd", "root"),
                   ("prolog_slurmctld", "uid 64030"), ("prolog_task", "uid 1000"),
                   ("prolog_slurmd", "uid 1000 (claims a root context)")}


def test_why_names_a_user_attested_failure_as_the_users_claim(tmp_path):
    from queries.why import why

    db = tmp_path / "s.duckdb"
    node = Node("n1")
    b = Batch("t")
    subj, payload = message(node, 1000, context="prolog_slurmd", job_id="78", fail_index=0,
                            ts=NOW - 10**9)
    b.add(decode_message(payload, subj, 1, NOW), 1, subj, NOW, payload, None, node.cluster)
    _parts, tables = b.arrow()
    with Store(db, consumer="t") as st:
        st.commit(tables, b.last_seq)
    out = why(open_source(db=str(db), quiet=True), "n1")
    assert out["cause"]["attested"] == "uid 1000 (claims a root context)"
    assert "[user-attested: uid 1000 (claims a root context)]" in out["verdict"]
