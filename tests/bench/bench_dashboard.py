"""Benchmark: overview and job page load time in real headless chromium on a
big history (default 10 million script runs), p50/p95 from the browser's
Navigation Timing (startTime -> loadEventEnd, so queries, rendering, assets
and chart drawing are all in).

Baseline, in the same run and browser: the very same HTML saved as a static
file and served by a plain stdlib file server -- the cost of a page with no
queries at all.  The ratio says what the live queries add.

    .venv/bin/python tests/bench/bench_dashboard.py                  # queries bench history, 10M runs
    .venv/bin/python tests/bench/bench_dashboard.py --history own    # this file's history, 10M runs
    .venv/bin/python tests/bench/bench_dashboard.py --rows 1e6       # quicker
    .venv/bin/python tests/bench/bench_dashboard.py --db /tmp/x.duckdb   # an existing store

Stores are generated once into /tmp (never the repo) and reused by later
runs.  The default history is the queries benchmark's (bench_queries.generate:
2,000 nodes, a year, failure patterns incl. a systemic drain of every 7th node
and non-hook drains).  ``--history own`` is this file's generator in DuckDB SQL:
6 hooks per job (controller and two nodes, prolog and epilog), 2 scripts per
hook, and 8-GPU samples every 10 s for the newest 300 jobs (heavier job pages).
Goal: p95 < 1 s each.
"""

import argparse
import functools
import http.server
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from collector import schema  # noqa: E402

CHROMIUM = os.environ.get("HOOKSCOPE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
GOAL_S = 1.0


def generate(path, rows=10_000_000, gpu_jobs=300):
    """Write a store with ``rows`` script runs to ``path``; return the number of jobs."""
    n_hooks = rows // 2
    n_jobs = n_hooks // 6
    if os.path.exists(path):
        os.unlink(path)
    con = duckdb.connect(path)
    con.execute("SET preserve_insertion_order = true")
    schema.create_all(con)
    dt = 365 * 86400 / max(n_jobs, 1)
    # k: 0 prolog_slurmctld, 1-2 prolog_slurmd on two nodes, 3-4 epilog_slurmd, 5 epilog_slurmctld.
    con.execute(f"""
        CREATE TEMP TABLE h AS
        SELECT i, i // 6 AS j, i % 6 AS k,
               (hash(i // 6) % 2000)::INT AS n1,
               TIMESTAMPTZ '2025-12-01 00:00:00+00' + to_microseconds(((i // 6) * {dt} * 1e6)::BIGINT)
                 + CASE WHEN i % 6 < 3 THEN to_microseconds(((i % 6) * 150000)::BIGINT)
                        ELSE to_microseconds((1800e6 + (hash(i // 6) % 3600) * 1e6 + (i % 6) * 1e5)::BIGINT) END AS ts,
               hash(i) % 10000 AS r
        FROM range({n_hooks}) t(i)""")
    con.execute("""
        INSERT INTO hook_runs BY NAME
        SELECT printf('%016x', i) AS hook_id, printf('%032x', j) AS trace_id, 'gpu1' AS cluster,
               CASE WHEN k IN (0, 5) THEN 'ctl01'
                    ELSE printf('node%04d', (n1 + (k + 1) % 2) % 2000) END AS node,
               ['prolog_slurmctld', 'prolog_slurmd', 'prolog_slurmd', 'epilog_slurmd', 'epilog_slurmd',
                'epilog_slurmctld'][k + 1] AS context,
               'dir' AS layout, (1000000 + j)::VARCHAR AS job_id, 0 AS restart_count,
               printf('user%03d', hash(j) % 300) AS user_name, 1000 + (hash(j) % 300)::INT AS uid,
               'gpu' AS partition, printf('node[%04d-%04d]', n1, n1 + 1) AS nodelist, 'research' AS account,
               printf('job-%d', j % 5000) AS job_name, '0-7' AS gpus, ts AS start_ts,
               ts + to_microseconds((40000 + r * 7)::BIGINT) AS end_ts, 40 + r * 0.007 AS duration_ms,
               CASE WHEN r < 30 THEN 1 ELSE 0 END AS status, 2 AS n_scripts,
               CASE WHEN r < 30 THEN 1 END AS failed_index, 1 AS schema_version
        FROM h ORDER BY i""")
    con.execute("""
        INSERT INTO script_runs BY NAME
        SELECT printf('%016x%d', i, s) AS span_id, printf('%016x', i) AS hook_id, printf('%032x', j) AS trace_id,
               'gpu1' AS cluster,
               CASE WHEN k IN (0, 5) THEN 'ctl01' ELSE printf('node%04d', (n1 + (k + 1) % 2) % 2000) END AS node,
               ['prolog_slurmctld', 'prolog_slurmd', 'prolog_slurmd', 'epilog_slurmd', 'epilog_slurmd',
                'epilog_slurmctld'][k + 1] AS context,
               (1000000 + j)::VARCHAR AS job_id, printf('user%03d', hash(j) % 300) AS user_name, s AS idx,
               ['/etc/slurm/prologslurmctld.d/', '/etc/slurm/prolog.d/', '/etc/slurm/prolog.d/',
                '/etc/slurm/epilog.d/', '/etc/slurm/epilog.d/', '/etc/slurm/epilogslurmctld.d/'][k + 1]
                 || ['10-mounts.sh', '20-check-gpu.sh'][s + 1] AS path,
               -- a new version of every script rolls out on day 200, node by node
               sha256(path || CASE WHEN ts > TIMESTAMPTZ '2026-06-19 00:00:00+00' + to_minutes(n1::BIGINT)
                                   THEN 'v2' ELSE 'v1' END) AS sha256,
               ts + to_microseconds((s * 20000)::BIGINT) AS start_ts,
               ts + to_microseconds((s * 20000 + 20000 + r * 3)::BIGINT) AS end_ts,
               20 + r * 0.0035 + CASE WHEN k = 1 AND n1 % 97 = 0 THEN 800 ELSE 0 END AS duration_ms,
               CASE WHEN r < 30 AND s = 1 THEN 1 ELSE 0 END AS exit_code, false AS timed_out,
               CASE WHEN r < 30 AND s = 1 THEN 'nvidia-smi: GPU ' || (r % 8) || ' has fallen off the bus' END AS output
        FROM h, range(2) t(s) ORDER BY i, s""")
    con.execute(f"""
        INSERT INTO gpu_samples BY NAME
        SELECT DISTINCT ON (cluster, node, gpu_index, ts) * FROM (
        WITH jobs AS (SELECT j, min(ts) AS t0, max(ts) AS t1, any_value(n1) AS n1 FROM h
                      WHERE j >= {n_jobs - gpu_jobs} GROUP BY j)
        SELECT 'gpu1' AS cluster, printf('node%04d', (n1 + nn) % 2000) AS node,
               t0 + to_seconds(step * 10) AS ts, g AS gpu_index, printf('GPU-%d-%d', (n1 + nn) % 2000, g) AS uuid,
               'NVIDIA H100 80GB HBM3' AS model, (1000000 + j)::VARCHAR AS job_id,
               0.5 + 0.4 * sin(step / 30.0 + g) AS utilization, ((30 + g + step % 40) * 2^30)::BIGINT AS memory_used,
               (80 * 2^30)::BIGINT AS memory_total, 350 + 250 * sin(step / 25.0 + g) AS power_w,
               55 + 15 * sin(step / 40.0 + g) AS temperature_c, 1980 - 5 * (step % 20) AS sm_clock_mhz,
               0 AS ecc_sbe, CASE WHEN g = 5 AND step > 200 AND j % 7 = 0 THEN 1 ELSE 0 END AS ecc_dbe,
               CASE WHEN g = 3 AND step > 150 AND j % 5 = 0 THEN 79 ELSE 0 END AS xid, 0 AS retired_pages,
               0 AS throttle_reasons, 'replay' AS source
        FROM jobs, range(2) a(nn), range(8) b(g),
             range(0, (epoch(t1) - epoch(t0))::BIGINT // 10 + 1) c(step))""")
    con.execute("""
        INSERT INTO node_events BY NAME
        SELECT 'ev-' || hook_id AS event_id, cluster, node, end_ts + INTERVAL 2 SECOND AS ts,
               'DRAIN' AS state, 'Prolog error' AS reason, 'slurmctld' AS source
        FROM hook_runs WHERE status <> 0 AND context = 'prolog_slurmd'
        ORDER BY start_ts DESC LIMIT 50""")
    con.execute("DROP TABLE h")
    con.execute("CHECKPOINT")
    con.close()
    return n_jobs


def _nav_time(page, url):
    page.goto(url, wait_until="load")
    page.wait_for_function("document.documentElement.hasAttribute('data-charts-ready')")
    return page.evaluate("""() => { const n = performance.getEntriesByType('navigation')[0];
        return [n.loadEventEnd - n.startTime, n.responseStart - n.requestStart]; }""")


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def measure(page, urls, rounds):
    """p50/p95 (ms) of total load and of server time (request -> first byte)."""
    total, server = [], []
    _nav_time(page, urls[0])  # warm the browser's asset cache and DuckDB's
    for i in range(rounds):
        t, s = _nav_time(page, urls[i % len(urls)])
        total.append(t)
        server.append(s)
    return {"p50": statistics.median(total), "p95": _pct(total, 95), "server_p95": _pct(server, 95),
            "n": len(total)}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=10_000_000, help="script runs to generate (default 1e7)")
    ap.add_argument("--db", help="use (or generate once into) this store instead of a fresh one")
    ap.add_argument("--rounds", type=int, default=20, help="page loads per page kind")
    ap.add_argument("--history", choices=("queries", "own"), default="queries",
                    help="queries: the queries benchmark's history (tests/bench/bench_queries.py: 2,000 nodes, "
                         "a year, a systemic drain of every 7th node, hourly GPU samples); own: this file's "
                         "generator (controller hooks, 8-GPU samples every 10 s for the newest 300 jobs)")
    a = ap.parse_args(argv)
    rows = int(a.rows)
    db = a.db or (f"/tmp/hookscope-bench-dashboard-{rows}.duckdb" if a.history == "own"
                  else f"/tmp/hookscope-bench-dashboard-queries-{rows}/hookscope.duckdb")
    if not os.path.exists(db):
        t = time.perf_counter()
        if a.history == "own":
            generate(db, rows)
        else:
            from tests.bench import bench_queries

            os.makedirs(os.path.dirname(db), exist_ok=True)
            work_path = os.path.join(os.path.dirname(db), "work.duckdb")
            work = duckdb.connect(work_path)
            work.execute(f"SET temp_directory = '{os.path.dirname(db)}/tmp'")
            bench_queries.generate(work, rows, 2000)
            bench_queries.write_store(work, db)
            work.close()
            os.unlink(work_path)
        print(f"generated {rows:,} script runs ({a.history} history) into {db} in {time.perf_counter() - t:.1f} s")
    con = duckdb.connect(db, read_only=True)
    n_scripts, n_hooks, n_gpu = con.execute(
        "SELECT (SELECT count(*) FROM script_runs), (SELECT count(*) FROM hook_runs), "
        "(SELECT count(*) FROM gpu_samples)").fetchone()
    # Job pages: the newest jobs with GPU samples tagged with their job, else the newest jobs.
    gpu_jobs = [r[0] for r in con.execute(
        "SELECT DISTINCT job_id FROM gpu_samples WHERE job_id IS NOT NULL ORDER BY job_id DESC LIMIT 10").fetchall()]
    if not gpu_jobs:
        gpu_jobs = [r[0] for r in con.execute(
            "SELECT job_id FROM hook_runs WHERE job_id IS NOT NULL GROUP BY job_id "
            "ORDER BY max(start_ts) DESC LIMIT 10").fetchall()]
    con.close()
    print(f"store {db}: {n_scripts:,} script runs, {n_hooks:,} hook runs, {n_gpu:,} GPU samples")

    from playwright.sync_api import sync_playwright

    from dashboards.server import make_server

    srv = make_server(db=db)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    static_dir = Path(f"/tmp/hookscope-bench-dashboard-static-{os.getpid()}")
    (static_dir / "static").mkdir(parents=True, exist_ok=True)
    base = srv.url.rstrip("/")
    pages = {"overview": ["/"], "job": [f"/job/{j}" for j in gpu_jobs]}
    # Baseline: the same HTML (and assets), pre-rendered, from a plain file server.
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "dash.js", "dash.css"):
        (static_dir / "static" / name).write_bytes(urllib.request.urlopen(f"{base}/static/{name}").read())
    static_urls = {}
    for kind, paths in pages.items():
        static_urls[kind] = []
        for i, p in enumerate(paths):
            f = static_dir / f"{kind}-{i}.html"
            f.write_bytes(urllib.request.urlopen(base + p).read())
            static_urls[kind].append(f"/{f.name}")
    fsrv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(static_dir)))
    threading.Thread(target=fsrv.serve_forever, daemon=True).start()
    fbase = f"http://127.0.0.1:{fsrv.server_address[1]}"
    ok = True
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            print(f"\n{'page':<10} {'dashboard p50':>14} {'p95':>9} {'server p95':>11} | "
                  f"{'static p50':>11} {'p95':>9} | {'ratio p95':>9}  goal p95 < {GOAL_S:.0f} s")
            for kind in pages:
                live = measure(page, [base + p for p in pages[kind]], a.rounds)
                stat = measure(page, [fbase + p for p in static_urls[kind]], a.rounds)
                ratio = live["p95"] / max(stat["p95"], 0.001)
                good = live["p95"] < GOAL_S * 1000
                ok &= good
                print(f"{kind:<10} {live['p50']:>11.0f} ms {live['p95']:>6.0f} ms {live['server_p95']:>8.0f} ms | "
                      f"{stat['p50']:>8.0f} ms {stat['p95']:>6.0f} ms | {ratio:>8.1f}x  {'OK' if good else 'OVER'}")
            browser.close()
    finally:
        srv.shutdown()
        srv.server_close()
        fsrv.shutdown()
        import shutil

        shutil.rmtree(static_dir, ignore_errors=True)
    print("\nratio = dashboard p95 / the same page as a static file; "
          f"{'all pages under' if ok else 'SOME PAGE OVER'} the {GOAL_S:.0f} s goal")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
