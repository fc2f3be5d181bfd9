"""Secrets never reach the store: planted in script output and in the
environment of a script that prints its environment, run through the real
runner -> agent -> nats-server -> collector, then the DuckDB file and every
byte of the Parquet archive (and the stream itself) are searched for them."""

from __future__ import annotations

import os

from tests.helpers.pipeline import Pipeline, bare_status, write_scripts

TOKEN = "ghp_" + "Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa98"
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETzz"
DBPASS = "hunter2-correct-horse-battery"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
SECRETS = (TOKEN, AWS, DBPASS, BEARER)


def _all_bytes(root) -> bytes:
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out.append(fh.read())
    return b"".join(out)


def test_planted_secrets_never_reach_duckdb_or_parquet(pl, tmp_path):
    d = write_scripts(tmp_path / "prolog.d", {
        "10-leaky.sh": (
            f'echo "cloning https://alice:{DBPASS}@git.example.com/repo.git"\n'
            f'echo "Authorization: Bearer {BEARER}"\n'
            f'echo "using token {TOKEN}"\n'
            "env | sort\n"
            "exit 3\n"),
    })
    env = {"AWS_SECRET_ACCESS_KEY": AWS, "GITHUB_TOKEN": TOKEN, "DB_PASSWORD": DBPASS}
    p = pl.run_hook("node001", d, 42, env=env, extra_args=["--no-passthrough", "--output-on", "always"])
    assert p.returncode == 3 == bare_status(d, env=dict(os.environ, **env))
    pl.snapshot_journals()
    assert pl.agent_once("node001").returncode == 0
    pl.collect_once()
    pl.assert_exact()
    # the run and its (redacted) output are stored ...
    (out,) = pl.query("SELECT output FROM script_runs")[0:1][0]
    assert "REDACTED" in out and "AWS_SECRET_ACCESS_KEY=" in out
    # ... and no secret is anywhere in the store, the archive or the stream
    db_bytes = pl.db.read_bytes()
    wal = pl.db.with_suffix(".duckdb.wal")
    if wal.exists():
        db_bytes += wal.read_bytes()
    archive = pl.archive_bytes()
    assert archive, "the Parquet archive must exist to be searched"
    stream = _all_bytes(pl.nats.store_dir / "jetstream")
    for secret in SECRETS:
        s = secret.encode()
        assert s not in db_bytes, f"secret {secret[:6]}... found in {pl.db}"
        assert s not in archive, f"secret {secret[:6]}... found in the Parquet archive"
        assert s not in stream, f"secret {secret[:6]}... found in the JetStream store"
    # compressed pages (DuckDB FSST/dictionary, Parquet zstd/snappy) could hide
    # a secret from a byte search, so search every text column by value too
    for secret in SECRETS:
        assert not _sql_hits(pl, secret), f"secret {secret[:6]}... found by SQL"
    seen = {h[0] if "parquet" not in str(h[0]) else "parquet" for h in _sql_hits(pl, "AWS_SECRET_ACCESS_KEY=")}
    assert {"script_runs", "journal", "parquet"} <= seen, f"the search must see the output everywhere: {seen}"
    # the planted values are really in the script's raw output (the test would
    # otherwise pass vacuously): run the script bare and look
    raw = os.popen(f"env AWS_SECRET_ACCESS_KEY='{AWS}' {d}/10-leaky.sh").read()
    assert AWS in raw and TOKEN in raw


def _sql_hits(pl: Pipeline, secret: str) -> list:
    import duckdb

    con = duckdb.connect(str(pl.db), read_only=True)
    hits = []
    try:
        cols = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE data_type IN ('VARCHAR', 'JSON', 'BLOB', 'VARCHAR[]')").fetchall()
        for t, col in cols:
            n = con.execute(f'SELECT count(*) FROM "{t}" WHERE CAST("{col}" AS VARCHAR) LIKE ?',
                            [f"%{secret}%"]).fetchone()[0]
            if n:
                hits.append((t, col, n))
        files = [str(f) for f in pl.archive.rglob("*.parquet")]
        for f in files:
            for (col, typ) in con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{f}'))").fetchall():
                if "VARCHAR" in typ or "BLOB" in typ or "JSON" in typ:
                    n = con.execute(f"SELECT count(*) FROM read_parquet('{f}') WHERE CAST(\"{col}\" AS VARCHAR) LIKE ?",
                                    [f"%{secret}%"]).fetchone()[0]
                    if n:
                        hits.append((f, col, n))
        assert files and cols
    finally:
        con.close()
    return hits
