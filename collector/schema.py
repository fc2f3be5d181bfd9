"""The store's tables: one definition shared by the collector (writer),
``rebuild``, the queries library and the dashboard (readers).

Times are ``TIMESTAMPTZ`` in UTC, as the node's clock saw them (``skew_ms``
says how far that clock was from the collector's when the message arrived).
Each table has an idempotency key (``KEYS``) so redelivery and replays
insert nothing twice.  Since store version 2 the key is not a PRIMARY KEY
(DuckDB keeps those indexes in memory, ~57 bytes a row, for ever):
``collector.dedup`` inserts only rows whose key is not stored yet, probing
the stored rows of the batch's time range.  Only ``ingest_state`` keeps a
PRIMARY KEY (one row per collector).  Documented in docs/store.md.
"""

#: 2: no PRIMARY KEYs (bounded dedup, collector.dedup); journal.ts.
#: Stores of version 1 are migrated when the collector opens them
#: (collector.migrate).
STORE_VERSION = 2

TABLES = {
    # One row per hook invocation (a Prolog run on a node, an EpilogSlurmctld...).
    "hook_runs": """
        hook_id        VARCHAR NOT NULL,      -- 16 hex, the hook span's span ID
        trace_id       VARCHAR NOT NULL,      -- one trace per job
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        context        VARCHAR NOT NULL,      -- prolog_slurmd, epilog_slurmctld, ...
        layout         VARCHAR,
        job_id         VARCHAR,
        restart_count  INTEGER,
        user_name      VARCHAR,
        uid            INTEGER,
        partition      VARCHAR,
        nodelist       VARCHAR,
        account        VARCHAR,
        job_name       VARCHAR,
        array_job_id   VARCHAR,
        array_task_id  VARCHAR,
        gpus           VARCHAR,               -- SLURM_JOB_GPUS / *_VISIBLE_DEVICES as recorded
        start_ts       TIMESTAMPTZ NOT NULL,
        end_ts         TIMESTAMPTZ,
        duration_ms    DOUBLE,
        status         INTEGER,               -- exit status the runner returned to Slurm
        n_scripts      INTEGER,
        failed_index   INTEGER,
        runner_killed  BOOLEAN DEFAULT FALSE, -- runner died (slurmd SIGKILL) mid-hook
        warnings       VARCHAR[],
        schema_version INTEGER,
        received_ts    TIMESTAMPTZ,
        skew_ms        DOUBLE,
        stream_seq     UBIGINT,
        attested_uid   INTEGER                -- uid owning the node spool it came from (0 root; NULL: unmarked, root)
    """,
    # One row per script of a hook (including refused ones).
    "script_runs": """
        span_id        VARCHAR NOT NULL,
        hook_id        VARCHAR NOT NULL,
        trace_id       VARCHAR NOT NULL,
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        context        VARCHAR NOT NULL,
        job_id         VARCHAR,
        user_name      VARCHAR,
        idx            INTEGER,
        path           VARCHAR NOT NULL,
        sha256         VARCHAR,
        size           BIGINT,
        mode           INTEGER,
        owner_uid      INTEGER,
        mtime          TIMESTAMPTZ,
        start_ts       TIMESTAMPTZ NOT NULL,
        end_ts         TIMESTAMPTZ,
        duration_ms    DOUBLE,
        exit_code      INTEGER,
        signal         INTEGER,
        timed_out      BOOLEAN,
        refused        VARCHAR,               -- reason, NULL when it ran
        runner_killed  BOOLEAN DEFAULT FALSE,
        output         VARCHAR,               -- redacted tail, on failure
        output_truncated BOOLEAN,
        exported       VARCHAR[],
        stream_seq     UBIGINT,
        attested_uid   INTEGER                -- as hook_runs.attested_uid
    """,
    "span_events": """
        span_id        VARCHAR NOT NULL,
        hook_id        VARCHAR,
        node           VARCHAR,
        ts             TIMESTAMPTZ NOT NULL,
        name           VARCHAR NOT NULL,
        attributes     JSON,
        -- idx: position among the span's events (8 GPU snapshots can share one ts);
        -- no comment after the last column (tests build bodies by editing lines)
        idx            INTEGER NOT NULL DEFAULT 0
    """,
    "gpu_samples": """
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        ts             TIMESTAMPTZ NOT NULL,
        gpu_index      INTEGER NOT NULL,
        uuid           VARCHAR,
        model          VARCHAR,
        job_id         VARCHAR,
        utilization    DOUBLE,                -- 0..1
        memory_used    BIGINT,                -- bytes
        memory_total   BIGINT,
        power_w        DOUBLE,
        temperature_c  DOUBLE,
        sm_clock_mhz   DOUBLE,
        ecc_sbe        BIGINT,
        ecc_dbe        BIGINT,
        xid            BIGINT,
        retired_pages  BIGINT,
        throttle_reasons BIGINT,
        source         VARCHAR
    """,
    "node_events": """
        event_id       VARCHAR NOT NULL,      -- the record hash
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        ts             TIMESTAMPTZ NOT NULL,
        state          VARCHAR,
        reason         VARCHAR,
        source         VARCHAR
    """,
    # Every journal record, as the node wrote it: the per-node hash chain.
    # A node's journal re-created (spool wiped, chain.head corrupt) starts a
    # new chain at seq 1: the chain id keeps its rows apart from the old ones.
    "journal": """
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        chain          VARCHAR NOT NULL,      -- R_CHAIN; '' for records written before chain ids
        seq            UBIGINT NOT NULL,
        kind           VARCHAR NOT NULL,
        hook_id        VARCHAR,
        hash           VARCHAR NOT NULL,
        prev           VARCHAR NOT NULL,
        record         VARCHAR NOT NULL,      -- canonical JSON, hashed
        attested_uid   INTEGER                -- as hook_runs.attested_uid (outside the hash)
    """,
    # Chain heads nodes published (emitter.chainheads), signed with their NKey:
    # "chain <chain> of <node> reached <seq> whose record hashes to <hash>".
    # audit verify holds the store's last record of each chain to the newest
    # head whose signature holds (docs/collector.md "Chain heads").
    "chain_heads": """
        cluster        VARCHAR NOT NULL,
        node           VARCHAR NOT NULL,
        chain          VARCHAR NOT NULL,
        seq            UBIGINT NOT NULL,      -- last record of the chain the node had shipped
        hash           VARCHAR NOT NULL,      -- that record's hash
        ts             TIMESTAMPTZ NOT NULL,  -- node clock at publication (signed, whole us)
        signature      VARCHAR,               -- base64url ed25519 over contract.chain_head_payload; NULL: unsigned
        public_key     VARCHAR,               -- the signer's nkey public key (U...); NULL: unsigned
        received_ts    TIMESTAMPTZ,
        stream_seq     UBIGINT
    """,
    "dead_letters": """
        stream_seq     UBIGINT NOT NULL,
        subject        VARCHAR,
        reason         VARCHAR NOT NULL,
        detail         VARCHAR,
        received_ts    TIMESTAMPTZ NOT NULL,
        size           BIGINT,
        payload        BLOB
    """,
    # Highest stream sequence whose rows are committed, per consumer.
    "ingest_state": """
        consumer       VARCHAR PRIMARY KEY,
        last_seq       UBIGINT NOT NULL,
        updated_ts     TIMESTAMPTZ NOT NULL
    """,
}


#: Columns a new store compresses with zstd (DuckDB's ``USING COMPRESSION``)
#: instead of letting each checkpoint pick a method: the canonical JSON
#: records and their SHA-256 hex digests.  DuckDB's default analysis tries
#: every string method on them (dict_fsst at length) at each checkpoint, and
#: a checkpoint rewrites the table's partly filled last row group: on the
#: collector bench's journal it was 60 % of the commit time, and zstd made
#: the file half the size besides (docs/benchmarks.md "Journal compression").
#: Physical only: the same rows, types and SQL.  Only where the file can
#: hold it (:func:`zstd_available`); existing tables keep theirs (no rewrite).
ZSTD_COLUMNS = {"journal": ("hash", "prev", "record")}


def table_body(table: str, zstd: bool = False) -> str:
    """``TABLES[table]``, with ``USING COMPRESSION zstd`` on its ZSTD_COLUMNS when ``zstd``."""
    body = TABLES[table]
    if not zstd:
        return body
    out = []
    for line in body.split("\n"):
        code, sep, comment = line.partition("--")
        words = code.split()
        if words and words[0] in ZSTD_COLUMNS.get(table, ()):
            # after the type and constraints, before the comma: spacing kept
            stripped = code.rstrip()
            comma = "," if stripped.endswith(",") else ""
            code = stripped[:len(stripped) - len(comma)] + " USING COMPRESSION zstd" + comma + code[len(stripped):]
        out.append(code + sep + comment)
    return "\n".join(out)


def zstd_available(con) -> bool:
    """Whether tables created on ``con``'s database can use zstd: DuckDB
    refuses it (a binder error) in a file of an older storage version, and
    older releases may lack it.  Tried on a scratch table in a transaction
    that is rolled back, so a process killed meanwhile leaves nothing
    behind.  Inside a caller's transaction there is no probe: False (the
    default compression)."""
    import duckdb

    def txid():
        return con.execute("SELECT txid_current()").fetchall()[0][0]
    try:
        if txid() == txid():  # one transaction for both: the caller's (a BEGIN would abort it)
            return False
    except duckdb.Error:
        return False
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE TABLE _hs_zstd_probe (v VARCHAR USING COMPRESSION zstd)")
        return True
    except duckdb.Error:
        return False
    finally:
        con.execute("ROLLBACK")


def zstd_for(con, tables) -> bool:
    """Whether ``tables``, about to be created, get zstd: probed only when
    one of them has ZSTD_COLUMNS (existing tables keep their compression)."""
    return any(t in ZSTD_COLUMNS for t in tables) and zstd_available(con)


def ddl(zstd: bool = False) -> list[str]:
    """CREATE TABLE IF NOT EXISTS statements for every table."""
    return [f"CREATE TABLE IF NOT EXISTS {name} ({table_body(name, zstd)})" for name in TABLES]


#: Columns added to a table after stores were first created (appended, so a
#: grown store has the schema's column order): ``create_all`` adds them to
#: an existing store; readers NULL them where a store or archive lacks them.
ADDED_COLUMNS = {
    "hook_runs": (("attested_uid", "INTEGER"),),
    "script_runs": (("attested_uid", "INTEGER"),),
    "journal": (("attested_uid", "INTEGER"),),
}


#: Columns only the live store has: derived by the store at insert, not in
#: the decoder's rows, the Arrow schemas or the archive (``columns.NAMES``
#: leaves them out).  ``journal.ts``: the record's ``ts`` (node clock, UTC,
#: microseconds), the time bound of the journal's dedup (collector.dedup).
STORE_COLUMNS = {
    "journal": (("ts", "TIMESTAMPTZ"),),
}


def create_all(con) -> None:
    """Create the tables on a DuckDB connection (idempotent), and grow an
    older store's tables by ADDED_COLUMNS and STORE_COLUMNS (nothing stored
    is touched; a version-1 store is then migrated: collector.migrate)."""
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema()").fetchall()}
    for stmt in ddl(zstd_for(con, set(ZSTD_COLUMNS) - have)):
        con.execute(stmt)
    for added in (ADDED_COLUMNS, STORE_COLUMNS):
        for table, cols in added.items():
            for name, typ in cols:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {typ}")


#: Parquet archive layout (see docs/store.md, collector/archive.py):
#:   <archive>/<table>/date=<YYYY-MM-DD>/<cluster>/<consumer>-<first_seq:012d>-<last_seq:012d>.parquet
#: with ``cluster`` a column inside the files, and a 0-row schema file per table
#: under date=1970-01-01 (archives before this: <table>/cluster=<c>/date=<d>/..., still read)
#: for every table above except ingest_state, plus the table "raw" (every
#: message as received).  Files are immutable; a redelivery after a crash can
#: write a second file with the same rows, so archive readers dedupe on the
#: table's key (KEYS below).
ARCHIVE_TABLES = ("hook_runs", "script_runs", "span_events", "gpu_samples", "node_events",
                  "journal", "chain_heads", "dead_letters", "raw")
RAW_COLUMNS = """
        stream_seq     UBIGINT NOT NULL,
        subject        VARCHAR NOT NULL,
        msg_id         VARCHAR,
        received_ts    TIMESTAMPTZ NOT NULL,
        schema_version INTEGER,
        payload        BLOB NOT NULL
"""
KEYS = {
    "hook_runs": ("hook_id",),
    "script_runs": ("span_id",),
    "span_events": ("span_id", "name", "ts", "idx"),
    "gpu_samples": ("cluster", "node", "gpu_index", "ts"),
    "node_events": ("event_id",),
    "journal": ("cluster", "node", "chain", "seq"),
    "chain_heads": ("cluster", "node", "chain", "seq", "ts"),
    "dead_letters": ("stream_seq",),
    "raw": ("stream_seq",),
}


def snapshot_path(db_path: str) -> str:
    """Read-only snapshot the collector publishes next to its live DuckDB file.

    DuckDB allows one writing process per file and no readers beside it, so
    readers (queries, dashboard) open this file when the live file is locked:
    a small DuckDB catalog of views over Parquet parts cut from the live
    tables (``collector.snapshot``; the parts are in ``<base>.snapshot.d``).
    ``/var/lib/hookscope/hookscope.duckdb`` -> ``.../hookscope.snapshot.duckdb``.
    """
    base = db_path[:-len(".duckdb")] if db_path.endswith(".duckdb") else db_path
    return base + ".snapshot.duckdb"
