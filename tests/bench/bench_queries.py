"""Benchmark: why / audit job / drains over a year of history, against grep.

Generates (in DuckDB SQL: range() + hash-based randomness, no Python loops)
a history of ``--rows`` script runs (default 10 million) on ``--nodes``
nodes (default 2,000) over a year, with these failure patterns:

* background noise: 1 in 10,000 script runs exits 1;
* timeouts: 1 in 50,000 health-check runs hangs past its budget;
* a flaky node (the first one): its GPU check fails 30 % of the time in the
  last 30 days, with XID 79 GPU samples;
* a systemic regression: a broken 30-health.sh is rolled out to every 7th
  node for the last 6 hours, so their latest prolog fails (one drains row);
* non-hook drains (Kill task failed, Not responding) as node events.

It writes the DuckDB store (``collector.schema.create_all`` + INSERT) and the
Parquet archive (partitioned by cluster/date) under --out (default /tmp,
never the repo), plus the baseline: the same history as TensorWave-style
per-node text logs (one file per node, a line per script start and end).

Then, side by side in the same run, it times:

* ``why NODE``, ``audit job JOBID``, ``drains`` on both sources;
* the grep baseline: the node's last failure (``grep -E 'exit=[1-9]'`` over
  the node's log, last line), and the same answer grep needs for "is it
  systemic?" (grep every node's log for failures of that script);

and prints the figures and ratios.  Usage:

    .venv/bin/python tests/bench/bench_queries.py            # 10M runs (~5 min, ~6 GB in /tmp)
    .venv/bin/python tests/bench/bench_queries.py --rows 1000000
    .venv/bin/python tests/bench/bench_queries.py --keep     # then --reuse to time again
    .venv/bin/python tests/bench/bench_queries.py --compact  # + the archive as the collector
                                                             # writes it, before/after compaction

``--compact`` cuts each archive partition into ``--fetches-per-day`` files
(default 48: the collector writes one per fetch), compacts a hard-linked copy
of it with ``collector.compact.compact`` once per ``--codecs`` codec (timed),
and times every query on the DuckDB store, the uncompacted archive and each
compacted copy interleaved (repeat, query, source), so load changes fall on
all alike; every source must give the same answers.  ``--fetches-per-day 1``
keeps the generated files (one per partition, time order, not sorted by
node): the 10 M-run comparison of docs/benchmarks.md:

    .venv/bin/python tests/bench/bench_queries.py --keep --compact --fetches-per-day 1 --codecs snappy,zstd
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from collector import schema  # noqa: E402
from queries.audit import audit_job  # noqa: E402
from queries.drains import drains  # noqa: E402
from queries.source import open_source  # noqa: E402
from queries.why import why  # noqa: E402

T_END = "2026-12-01 00:00:00+00"
YEAR_US = 365 * 86400 * 10**6
PROLOG = [(0, "/etc/slurm/prolog.d/10-mounts.sh"), (1, "/etc/slurm/prolog.d/20-gpu.sh"),
          (2, "/etc/slurm/prolog.d/30-health.sh")]
EPILOG = [(0, "/etc/slurm/epilog.d/80-cleanup.sh"), (1, "/etc/slurm/epilog.d/90-accounting.sh")]
TARGETS_MS = {"why": 100, "audit job": 50, "drains": 200}  # issue 14's goals


def log(msg):
    print(msg, flush=True)


def generate(work: duckdb.DuckDBPyConnection, rows: int, nodes: int):
    """The history as plain tables in ``work`` (same columns as the store)."""
    pairs = max(1, rows // 5)  # one (job, node) pair runs 3 prolog + 2 epilog scripts
    scripts = ", ".join(f"({i}, 'prolog_slurmd', '{p}')" for i, p in PROLOG) + ", " + \
        ", ".join(f"({i}, 'epilog_slurmd', '{p}')" for i, p in EPILOG)
    work.execute(f"""
        CREATE OR REPLACE TABLE pairs AS
        SELECT p, (p // 2)::VARCHAR AS job_id,
               'node' || lpad(((hash(p // 2) + p % 2) % {nodes})::VARCHAR, 4, '0') AS node,
               TIMESTAMPTZ '{T_END}' - INTERVAL 365 DAY
                   + to_microseconds((p * ({YEAR_US} // {pairs}))::BIGINT) AS t,
               'user' || (hash(p // 2, 'u') % 300)::VARCHAR AS user_name
        FROM range({pairs}) r(p)""")
    work.execute(f"""
        CREATE OR REPLACE TABLE s0 AS
        SELECT p, job_id, node, user_name, x.idx, x.context, x.path,
               t + CASE WHEN x.context = 'prolog_slurmd' THEN INTERVAL 0 SECOND
                        ELSE INTERVAL 1 HOUR END + to_microseconds(x.idx * 40000) AS start_ts,
               datediff('month', TIMESTAMPTZ '2025-01-01 00:00:00+00', t) AS month,
               (x.path LIKE '%30-health.sh' AND t >= TIMESTAMPTZ '{T_END}' - INTERVAL 6 HOUR
                    AND right(node, 4)::INTEGER % 7 = 0) AS broken,
               (x.path LIKE '%20-gpu.sh' AND node = 'node0000'
                    AND t >= TIMESTAMPTZ '{T_END}' - INTERVAL 30 DAY AND hash(p, 'f') % 10 < 3) AS flaky,
               (x.path LIKE '%30-health.sh' AND hash(p, 't') % 50000 = 0) AS hang,
               hash(p, x.idx, x.context) % 10000 = 0 AS noise
        FROM pairs, (VALUES {scripts}) x(idx, context, path)""")
    # A node whose prolog failed is drained: its epilog never runs.
    work.execute("""
        CREATE OR REPLACE TABLE script_runs AS
        SELECT substr(md5(p::VARCHAR || ':' || context || ':' || idx), 1, 16) AS span_id,
               substr(md5(p::VARCHAR || ':' || context), 1, 16) AS hook_id,
               substr(md5('c1:' || job_id), 1, 32) AS trace_id, 'c1' AS cluster, node, context,
               job_id, user_name, idx, path,
               sha256(path || CASE WHEN broken THEN ':broken' ELSE ':' || month END) AS sha256,
               1200 AS size, 33261 AS mode, 0 AS owner_uid, NULL::TIMESTAMPTZ AS mtime,
               start_ts,
               start_ts + to_microseconds(CASE WHEN hang THEN 300000000 ELSE 5000 + (hash(p, idx) % 60000)::BIGINT END)
                   AS end_ts,
               CASE WHEN hang THEN 300000.0 ELSE (5000 + (hash(p, idx) % 60000)::BIGINT) / 1000.0 END AS duration_ms,
               CASE WHEN hang THEN 137 WHEN broken THEN 1 WHEN flaky THEN 2 WHEN noise THEN 1 ELSE 0 END
                   AS exit_code,
               CASE WHEN hang THEN 9 END AS signal, hang AS timed_out, NULL AS refused,
               false AS runner_killed,
               CASE WHEN hang THEN 'waiting for /dev/nvidia0 ...'
                    WHEN broken THEN 'health: unknown option --fast'
                    WHEN flaky THEN 'GPU 3 has fallen off the bus'
                    WHEN noise THEN 'transient error' END AS output,
               false AS output_truncated, NULL::VARCHAR[] AS exported, p::UBIGINT AS stream_seq
        FROM s0
        WHERE NOT (context = 'epilog_slurmd' AND p IN (SELECT p FROM s0 WHERE broken))
        ORDER BY start_ts""")
    work.execute("""
        CREATE OR REPLACE TABLE hook_runs AS
        SELECT hook_id, any_value(trace_id) AS trace_id, 'c1' AS cluster, any_value(node) AS node,
               any_value(context) AS context, 'dir' AS layout, any_value(job_id) AS job_id,
               0 AS restart_count, any_value(user_name) AS user_name, 1000 AS uid, 'gpu' AS partition,
               any_value(node) AS nodelist, NULL AS account, NULL AS job_name, NULL AS array_job_id,
               NULL AS array_task_id, '0,1,2,3,4,5,6,7' AS gpus,
               min(start_ts) - INTERVAL 1 MILLISECOND AS start_ts, max(end_ts) AS end_ts,
               sum(duration_ms) + 2 AS duration_ms,
               coalesce(arg_min(exit_code, idx) FILTER (WHERE exit_code <> 0), 0) AS status,
               count(*) AS n_scripts, min(idx) FILTER (WHERE exit_code <> 0) AS failed_index,
               false AS runner_killed, []::VARCHAR[] AS warnings, 1 AS schema_version,
               max(end_ts) AS received_ts, 0.0 AS skew_ms, min(stream_seq) AS stream_seq
        FROM script_runs GROUP BY hook_id ORDER BY start_ts""")
    # GPU samples: 8 GPUs per node, hourly, for the last 7 days; XID 79 on the flaky node.
    work.execute(f"""
        CREATE OR REPLACE TABLE gpu_samples AS
        SELECT 'c1' AS cluster, 'node' || lpad((n % {nodes})::VARCHAR, 4, '0') AS node,
               TIMESTAMPTZ '{T_END}' - to_microseconds((h * 3600 * 1000000)::BIGINT) AS ts,
               g::INTEGER AS gpu_index, NULL AS uuid, 'NVIDIA H100 80GB HBM3' AS model, NULL AS job_id,
               (hash(n, h, g) % 100) / 100.0 AS utilization, 40 * 2::BIGINT**30 AS memory_used,
               80 * 2::BIGINT**30 AS memory_total, 350.0 AS power_w,
               50.0 + hash(n, h, g, 't') % 30 AS temperature_c, 1980.0 AS sm_clock_mhz,
               0::BIGINT AS ecc_sbe, 0::BIGINT AS ecc_dbe,
               CASE WHEN n = 0 AND g = 3 AND h < 48 THEN 79 ELSE 0 END::BIGINT AS xid,
               0::BIGINT AS retired_pages, 0::BIGINT AS throttle_reasons, 'replay' AS source
        FROM range({nodes}) a(n), range(168) b(h), range(8) c(g)""")
    work.execute(f"""
        CREATE OR REPLACE TABLE node_events AS
        SELECT md5('ev' || i) AS event_id, 'c1' AS cluster,
               'node' || lpad((hash(i, 'n') % {nodes})::VARCHAR, 4, '0') AS node,
               TIMESTAMPTZ '{T_END}' - to_microseconds((hash(i, 't') % {YEAR_US})::BIGINT) AS ts,
               CASE WHEN i % 3 = 0 THEN 'DOWN' ELSE 'DRAIN' END AS state,
               CASE WHEN i % 3 = 0 THEN 'Not responding' ELSE 'Kill task failed' END AS reason,
               'slurmctld_epilog' AS source
        FROM range(5000) r(i)""")
    # The journal for the last 30 days (a record per script start and end).
    work.execute(f"""
        CREATE OR REPLACE TABLE journal AS
        SELECT cluster, node, '' AS chain, (row_number() OVER (PARTITION BY node ORDER BY start_ts, idx, k))::UBIGINT AS seq,
               CASE k WHEN 0 THEN 'script_started' ELSE 'script_ended' END AS kind, hook_id,
               sha256(span_id || k) AS hash, sha256(span_id || (k - 1)) AS prev,
               '{{"exit_code":' || exit_code || ',"hook":"' || hook_id || '","index":' || idx
                   || ',"kind":"' || CASE k WHEN 0 THEN 'script_started' ELSE 'script_ended' END
                   || '","node":"' || node || '","path":"' || path || '","v":1}}' AS record
        FROM script_runs, range(2) k(k)
        WHERE start_ts >= TIMESTAMPTZ '{T_END}' - INTERVAL 30 DAY""")


def _cold_grep(cmd) -> str:
    """grep with a cold page cache (a site's logs rarely all fit in RAM): drop
    the kernel's caches first (root only; says so when it cannot)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"not measured (cannot drop caches: {exc.strerror}; run as root)"
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    return f"{(time.perf_counter() - t0) * 1000:8.1f} ms  -> {r.stdout.strip()} node(s)"


def write_store(work, db: str):
    con = duckdb.connect(db)
    schema.create_all(con)
    con.close()
    work.execute("ATTACH ? AS store", [db])
    for t in ("script_runs", "hook_runs", "gpu_samples", "node_events", "journal"):
        t0 = time.perf_counter()
        work.execute(f"INSERT INTO store.{t} BY NAME SELECT * FROM {t}")
        log(f"  store.{t}: {work.execute(f'SELECT count(*) FROM {t}').fetchone()[0]:,} rows "
            f"in {time.perf_counter() - t0:.1f} s")
    work.execute("DETACH store")


def write_archive(work, archive: str):
    os.makedirs(archive, exist_ok=True)
    for t, col in (("script_runs", "start_ts"), ("hook_runs", "start_ts"), ("gpu_samples", "ts"),
                   ("node_events", "ts"), ("journal", None)):
        date = f"{col}::DATE" if col else "DATE '2026-11-30'"
        work.execute(f"""COPY (SELECT *, {date} AS date FROM {t}) TO '{archive}/{t}'
                         (FORMAT parquet, PARTITION_BY (cluster, date), OVERWRITE_OR_IGNORE true,
                          FILENAME_PATTERN 'hookscope-collector-{{i}}')""")


def name_archive_files(archive: str):
    """Give the files the collector's names (<consumer>-<first>-<last>.parquet,
    disjoint stream-sequence ranges), then add one redelivered copy of the
    last day's script_runs file (overlapping range), as after a collector
    crash, so the readers' dedup is part of what is measured."""
    import re

    seq = 1
    last_file = None
    for table in sorted(os.listdir(archive)):
        for dirpath, _dirs, files in sorted(os.walk(os.path.join(archive, table))):
            for f in sorted(files):
                if re.search(r"-\d{12}-\d{12}\.parquet$", f):
                    continue
                new = os.path.join(dirpath, f"hookscope-collector-{seq:012d}-{seq + 9999:012d}.parquet")
                os.rename(os.path.join(dirpath, f), new)
                seq += 10000
                if table == "script_runs":
                    last_file = new
    if last_file:
        m = re.search(r"-(\d{12})-(\d{12})\.parquet$", last_file)
        dup = os.path.join(os.path.dirname(last_file),
                           f"hookscope-collector-{int(m.group(1)) + 7:012d}-{int(m.group(2)) + 7:012d}.parquet")
        if not os.path.exists(dup):
            shutil.copy(last_file, dup)


def split_archive(archive: str, per_day: int) -> int:
    """Cut every partition's file into ``per_day`` files of consecutive rows,
    as the collector writes them (one per fetch); returns the file count.
    ``per_day`` 1 leaves the generated files (one per partition, in time
    order, not sorted by node): at 10 M runs the 48-file archive takes
    minutes per query, and one file a day isolates what the sort and the
    file layout of compaction add."""
    import pyarrow.parquet as pq

    if per_day <= 1:
        return sum(1 for _d, _s, fs in os.walk(archive) for f in fs if f.endswith(".parquet"))
    n = 0
    for dirpath, _dirs, files in os.walk(archive):
        for f in sorted(files):
            if not f.endswith(".parquet") or f.startswith("part-"):
                continue
            path = os.path.join(dirpath, f)
            tb = pq.read_table(path)
            chunk = max(1, -(-tb.num_rows // per_day))
            for k, off in enumerate(range(0, tb.num_rows, chunk)):
                pq.write_table(tb.slice(off, chunk), os.path.join(dirpath, f"part-{f[:-8]}-{k:04d}.parquet"))
                n += 1
            os.unlink(path)
    return n


def write_logs(work, logs: str):
    """TensorWave-style per-node text logs: what SREs grep today."""
    work.execute(f"""
        COPY (
          SELECT node, line FROM (
            SELECT node, start_ts AS t, 0 AS k,
                   strftime(start_ts, '%Y-%m-%dT%H:%M:%S.%f') || ' ' || node || ' slurmd[2211]: ' || context
                   || ' job=' || job_id || ' user=' || user_name || ' start ' || path || ' sha256=' || sha256 AS line
            FROM script_runs
            UNION ALL
            SELECT node, end_ts, 1,
                   strftime(end_ts, '%Y-%m-%dT%H:%M:%S.%f') || ' ' || node || ' slurmd[2211]: ' || context
                   || ' job=' || job_id || ' end ' || path || ' exit=' || exit_code
                   || CASE WHEN timed_out THEN ' timed_out' ELSE '' END
                   || coalesce(' output=' || output, '')
            FROM script_runs) ORDER BY node, t, k)
        TO '{logs}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', PARTITION_BY (node),
                     OVERWRITE_OR_IGNORE true)""")


def date_bounds(archive: str, repeat: int):
    """Side by side on the archive: statements as they were without a
    ``_date`` bound and as they are now (issue 14), same answers."""
    from queries.source import date_floor
    con = open_source(archive=archive)
    node, ctx, t, job = con.execute(
        "SELECT node, context, start_ts, job_id FROM hook_runs WHERE status <> 0 "
        "ORDER BY start_ts DESC LIMIT 1").fetchone()
    rec = ("SELECT 1 AS ok FROM hook_runs WHERE node = ? AND context = ? AND start_ts > ?{b} AND status = 0 "
           "AND NOT coalesce(runner_killed, false) AND job_id IS DISTINCT FROM ? LIMIT 1")
    h = "SELECT hook_id FROM hook_runs WHERE job_id = ?"

    def audit_bound():
        lo = con.execute("SELECT min(start_ts) FROM hook_runs WHERE job_id = ?", [job]).fetchone()[0]
        return con.execute(f"SELECT * FROM script_runs WHERE job_id = ? AND start_ts >= ? AND _date >= ? "
                           f"AND hook_id IN ({h})", [job, lo, date_floor(lo), job]).fetchall()
    cases = [
        ("why: recovered since", lambda: con.execute(rec.format(b=""), [node, ctx, t, job]).fetchall(),
         lambda: con.execute(rec.format(b=" AND _date >= ?"), [node, ctx, t, date_floor(t), job]).fetchall()),
        ("audit job: scripts", lambda: con.execute(f"SELECT * FROM script_runs WHERE job_id = ? AND hook_id "
                                                   f"IN ({h})", [job, job]).fetchall(), audit_bound),
    ]
    log("\n== date bounds on the archive (no bound -> bound; same rows)")
    for name, before, after in cases:
        r0, t0 = timed(before, repeat)
        r1, t1 = timed(after, repeat)
        assert sorted(map(repr, r0)) == sorted(map(repr, r1)), name
        m0, m1 = statistics.median(t0), statistics.median(t1)
        log(f"  {name:<22} {m0:8.1f} ms -> {m1:8.1f} ms  {m0 / m1:6.1f}x  ({len(r1)} rows)")
    con.close()


def compacted_copy(archive: str, codec: str) -> str:
    """A hard-linked copy of ``archive`` (the inputs stay for the uncompacted
    timings: compaction writes new files and only unlinks the copy's links),
    compacted by ``collector.compact`` with ``codec``; returns its root."""
    from collector import compact as cp

    dst = f"{archive}-compacted-{codec}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(archive, dst, copy_function=os.link)
    saved, cp.COMPRESSION = cp.COMPRESSION, codec
    try:
        t0 = time.perf_counter()
        done = cp.compact(dst, today="2099-01-01")
    finally:
        cp.COMPRESSION = saved
    import pyarrow.parquet as pq

    files = [os.path.join(d, f) for d, _s, fs in os.walk(dst) for f in fs if f.endswith(".parquet")]
    size = sum(os.path.getsize(f) for f in files)
    bloom = 0
    for f in (r["file"] for r in done):
        md = pq.ParquetFile(f).metadata
        bloom += sum(max(0, md.row_group(g).column(c).bloom_filter_length or 0)
                     for g in range(md.num_row_groups) for c in range(md.num_columns))
    log(f"compacted ({codec}) {sum(r['inputs'] for r in done):,} files into {len(done):,} "
        f"in {time.perf_counter() - t0:.1f} s ({len(files):,} files, {size / 2**20:,.0f} MiB, "
        f"of which Bloom filters {bloom / 2**20:,.1f} MiB)")
    return dst


def time_sources(sources, broken, flaky, repeat) -> dict:
    """Each query on each source, interleaved (repeat, query, source) so a
    change of machine load falls on every source alike; medians."""
    cons, times = {}, {}
    for label, kw in sources:
        t0 = time.perf_counter()
        con = cons[label] = open_source(**kw)
        log(f"open {label}: {(time.perf_counter() - t0) * 1000:.0f} ms")
    job = cons["duckdb"].execute("SELECT job_id FROM hook_runs WHERE node = ? ORDER BY start_ts DESC "
                                 "LIMIT 1", [broken]).fetchone()[0]
    cases = {
        "why": lambda con: why(con, broken),
        "why (flaky node)": lambda con: why(con, flaky),
        "audit job": lambda con: audit_job(con, job),
        "drains": lambda con: drains(con),
    }
    answers = {}
    for _ in range(repeat):
        for name, fn in cases.items():
            for label, con in cons.items():
                res, t = timed(lambda: fn(con), 1)
                times.setdefault((label, name), []).extend(t)
                key = res["verdict"] if name.startswith("why") else repr(res)
                if answers.setdefault(name, key) != key:
                    raise SystemExit(f"DEFECT: {name} answers differently on {label}")
    results = {}
    for label, con in cons.items():
        log(f"\n== {label}")
        for name in cases:
            ts = times[(label, name)]
            med = results[(label, name)] = statistics.median(ts)
            goal = TARGETS_MS.get(name.split(" (")[0])
            verdict = "" if goal is None else (" OK" if med <= goal else (" DEFECT" if med > 1000 else " over goal"))
            log(f"  {name:<18} first {ts[0]:8.1f} ms  median {med:8.1f} ms  (goal <= {goal} ms){verdict}")
        con.close()
    log(f"\n  why: {answers['why'][:200]}")
    return results


def timed(fn, repeat):
    times = []
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return result, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="script runs to generate")
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/hookscope-bench-queries", help="work directory (not the repo)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="reuse data kept by an earlier run (--keep)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data (several GB) for --reuse")
    ap.add_argument("--compact", action="store_true",
                    help="time the archive as many small files, compact it, time it again")
    ap.add_argument("--bounds", action="store_true",
                    help="also time archive statements without and with their date bounds")
    ap.add_argument("--codecs", default="zstd",
                    help="with --compact: compact a copy of the archive with each of these Parquet "
                         "codecs (comma-separated, e.g. snappy,zstd) and time each")
    ap.add_argument("--fetches-per-day", type=int, default=48,
                    help="with --compact: files per partition before compaction (1: as generated, "
                         "the 10 M-run comparison in docs/benchmarks.md)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    db, archive, logs = str(out / "hookscope.duckdb"), str(out / "archive"), str(out / "logs")
    if not (a.reuse and os.path.exists(db)):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        work = duckdb.connect(str(out / "work.duckdb"))
        work.execute(f"SET temp_directory = '{out}/tmp'")
        generate(work, a.rows, a.nodes)
        n = work.execute("SELECT count(*) FROM script_runs").fetchone()[0]
        log(f"generated {n:,} script runs on {a.nodes:,} nodes in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        write_store(work, db)
        log(f"DuckDB store {db}: {os.path.getsize(db) / 2**20:.0f} MiB in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        write_archive(work, archive)
        log(f"Parquet archive {archive} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        write_logs(work, logs)
        log(f"per-node text logs {logs} in {time.perf_counter() - t0:.1f} s")
        work.close()
        os.unlink(out / "work.duckdb")
        shutil.rmtree(out / "tmp", ignore_errors=True)

    sources = [("duckdb", {"db": db}), ("archive", {"archive": archive})]
    if a.compact:
        t0 = time.perf_counter()
        nfiles = split_archive(archive, a.fetches_per_day)
        log(f"archive cut into {nfiles:,} files ({a.fetches_per_day} per partition) "
            f"in {time.perf_counter() - t0:.1f} s")
        small = f"archive, {a.fetches_per_day} file(s)/day"
        sources = [("duckdb", {"db": db}), (small, {"archive": archive})]
    name_archive_files(archive)
    if a.compact:
        for codec in a.codecs.split(","):
            sources.append((f"archive, compacted ({codec})", {"archive": compacted_copy(archive, codec)}))
    # The flaky node's last failure, and a node of the systemic regression.
    flaky = "node0000"
    con = open_source(db=db, quiet=True)
    worst = drains(con)
    broken = worst[0]["nodes"][0] if worst else flaky
    con.close()
    results = time_sources(sources, broken, flaky, a.repeat)

    # Baseline: grep, as SREs do today.
    node_log = f"{logs}/node={broken}/data_0.csv"
    grep_node = ["bash", "-c", f"grep -E ' exit=[1-9]' {node_log} | tail -n 1"]
    r, t_node = timed(lambda: subprocess.run(grep_node, capture_output=True, text=True), a.repeat)
    last = r.stdout.strip()
    script = last.split(" end ")[1].split(" ")[0] if " end " in last else "30-health.sh"
    grep_all = ["bash", "-c", f"grep -rhE ' end {script} exit=[1-9]' {logs} | cut -d' ' -f2 | sort -u | wc -l"]
    r2, t_all = timed(lambda: subprocess.run(grep_all, capture_output=True, text=True), max(1, a.repeat // 2))
    g_node, g_all = statistics.median(t_node), statistics.median(t_all)
    cold = _cold_grep(grep_all)
    log("\n== grep baseline (per-node text logs)")
    log(f"  is it systemic, COLD page cache   {cold}")
    log(f"  last failure, node log only       median {g_node:8.1f} ms  -> {last[:120]}")
    log(f"  + is it systemic (grep all nodes) median {g_all:8.1f} ms  -> {r2.stdout.strip()} node(s)")
    why_db = results[("duckdb", "why")]
    log("\n== ratios (grep time / hookscope time; > 1 means hookscope is faster)")
    log(f"  why (DuckDB) vs grep for the same answer (node's last failure + systemic): "
        f"{(g_node + g_all) / why_db:8.1f}x  (goal >= 50x)")
    log(f"  why (archive) vs the same grep:                                          "
        f"{(g_node + g_all) / results[(sources[1][0], 'why')]:8.1f}x")
    log(f"  why (DuckDB) vs grep of the node's own log only:                         "
        f"{g_node / why_db:8.2f}x  (that grep answers only 'last failure line': no cause "
        f"across nodes, no version change, no GPU, no node events)")
    if a.compact:
        for label, _kw in sources[2:]:
            log(f"\n== compaction ({small} time / {label} time)")
            for name in ("why", "why (flaky node)", "audit job", "drains"):
                before, after = results[(small, name)], results[(label, name)]
                log(f"  {name:<18} {before:8.1f} ms -> {after:8.1f} ms  {before / after:6.1f}x"
                    f"   (DuckDB store {results[('duckdb', name)]:8.1f} ms, {after / results[('duckdb', name)]:.1f}x)")
    if a.bounds:
        date_bounds(archive, max(a.repeat, 5))
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
    else:
        log(f"data kept in {out} (rerun with --reuse --out {out})")
    load = os.getloadavg()
    log(f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()
