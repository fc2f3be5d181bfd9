"""zstd on the journal's record and hash columns (schema.ZSTD_COLUMNS): a new
store declares it, DuckDB writes those columns with it, an old storage
version or an existing table is left as it is, and the rows read back the
same.  Against the real DuckDB; the DDL text has pure tests."""

from __future__ import annotations

import duckdb

from collector import schema
from collector.store import Store
from queries.source import table_columns
from tests.collector.test_store_dedup import T, batch, make_v1, stored

ZSTD = schema.ZSTD_COLUMNS["journal"]


def declared(con, table="journal") -> set:
    """The columns whose DDL in the store says USING COMPRESSION ZSTD."""
    sql = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0]
    cols = sql[sql.index("(") + 1:].split(", ")
    return {c.split()[0] for c in cols if "USING COMPRESSION ZSTD" in c.upper()}


def written(con, table="journal") -> dict:
    """{column: {compression of its data segments}} after a checkpoint."""
    out: dict = {}
    for col, comp, seg in con.execute(
            f"SELECT column_name, compression, segment_type FROM pragma_storage_info('{table}')").fetchall():
        if seg != "VALIDITY":
            out.setdefault(col, set()).add(comp.upper())
    return out


def assert_default_and_working(db):
    """The store at ``db`` opens with no zstd column and stores rows."""
    with Store(db) as st:
        assert declared(st.con) == set()
        st.commit(batch("journal", [(i, T + i * 10**9, 1) for i in range(50)]), 1)
        assert len(stored(st, "journal")) == 50


# ------------------------------------------------------------ pure: the DDL
def test_without_zstd_the_body_is_the_schema_text():
    for t in schema.TABLES:
        assert schema.table_body(t, False) == schema.TABLES[t]
        assert schema.table_body(t, True) == schema.TABLES[t] or t in schema.ZSTD_COLUMNS


def test_with_zstd_exactly_the_listed_columns_get_the_clause():
    body = schema.table_body("journal", True)
    marked = [ln.split()[0] for ln in body.splitlines() if "USING COMPRESSION zstd" in ln]
    assert marked == list(ZSTD)
    assert "-- canonical JSON, hashed" in body  # comments kept
    assert body.replace(" USING COMPRESSION zstd", "") == schema.TABLES["journal"]  # nothing else moved
    # the readers' column parser (queries.source) sees the same columns and types in it
    schema.TABLES["journal"], saved = body, schema.TABLES["journal"]
    try:
        with_clause = table_columns("journal")
    finally:
        schema.TABLES["journal"] = saved
    assert with_clause == table_columns("journal")


# ------------------------------------------------------------ real DuckDB
def test_a_new_store_writes_the_journal_columns_with_zstd(tmp_path):
    with Store(tmp_path / "s.duckdb") as st:
        tb = batch("journal", [(i, T + i * 10**9, 1) for i in range(3000)])
        st.commit(tb, 1)
        st.con.execute("CHECKPOINT")
        assert declared(st.con) == set(ZSTD)
        seen = written(st.con)
        for col in ZSTD:
            assert seen[col] == {"ZSTD"}, (col, seen[col])
        assert seen["node"] != {"ZSTD"}  # the others are DuckDB's choice
        assert sorted(r[3] for r in stored(st, "journal")) == list(range(3000))
        names = {r[0] for r in st.con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert "_hs_zstd_probe" not in names  # the scratch table was rolled back


def test_records_read_back_byte_for_byte(tmp_path):
    tb = batch("journal", [(i, T + i * 10**9, 1) for i in range(500)])["journal"]
    with Store(tmp_path / "s.duckdb") as st:
        st.commit({"journal": tb}, 1)
        st.con.execute("CHECKPOINT")
        got = st.con.execute("SELECT record, hash, prev FROM journal ORDER BY seq").fetchall()
    want = sorted(zip(tb.column("record").to_pylist(), tb.column("hash").to_pylist(),
                      tb.column("prev").to_pylist(), tb.column("seq").to_pylist()), key=lambda r: r[3])
    assert got == [r[:3] for r in want]


def test_the_probe_leaves_nothing_and_stays_out_of_a_callers_transaction(tmp_path):
    con = duckdb.connect(str(tmp_path / "p.duckdb"))
    assert schema.zstd_available(con)
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchall() == [(0,)]
    con.execute("BEGIN TRANSACTION")
    con.execute("CREATE TABLE mine (x INTEGER)")
    assert not schema.zstd_available(con)  # no probe inside it
    con.execute("COMMIT")  # the caller's transaction went on untouched
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["mine"]
    con.close()


def test_a_file_of_an_older_storage_version_gets_the_default(tmp_path):
    """DuckDB refuses zstd in a file of an older storage version (a store
    made by an older DuckDB): the store is created without it and works."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect()
    con.execute(f"ATTACH '{db}' AS o (STORAGE_VERSION 'v1.0.0')")
    con.execute("USE o")
    assert not schema.zstd_available(con)
    con.close()
    assert_default_and_working(db)


def test_an_existing_journal_keeps_its_compression(tmp_path):
    """No rewrite of a store's biggest table on upgrade: a journal made
    before (default compression) stays so; new rows go in as always."""
    db = tmp_path / "s.duckdb"
    con = duckdb.connect(str(db))
    for stmt in schema.ddl(zstd=False):
        con.execute(stmt)
    con.close()
    assert_default_and_working(db)


def test_a_version_1_migration_rewrites_the_journal_with_zstd(tmp_path):
    db = tmp_path / "v1.duckdb"
    make_v1(db)
    with Store(db) as st:
        assert declared(st.con) == set(ZSTD)
        assert len(stored(st, "journal")) == 20
