#!/usr/bin/env python3
"""Opening the Parquet archive: with and without the schema cache.

``queries.source.open_source(archive=...)`` decides per table whether its
files differ in columns (``union_by_name``), which used to read every
file's footer at every open.  ``collector.archive.file_shapes`` reads each
file once and keeps the answer in memory and in ``<root>/.shapes-<table>.json``.

Side by side in one run, on one archive of ``--files`` small files per table
(hook_runs, script_runs, journal; a few rows each, 28 days):

* ``cold``: no cache at all (what every open cost before);
* ``file``: a new process whose only cache is the ``.shapes-*.json`` files;
* ``memory``: a second open in the same process (the dashboard).

Usage: bench_archive_open.py [--files 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OPEN = ("import sys, time; sys.path.insert(0, sys.argv[2]); from queries.source import open_source; "
        "t = time.perf_counter(); open_source(archive=sys.argv[1]).close(); "
        "print((time.perf_counter() - t) * 1000)")


def build(root: str, n: int) -> None:
    import pyarrow.parquet as pq

    from collector.archive import Archive, file_name
    from collector.columns import ARROW_SCHEMAS
    Archive(root, fsync=False).close()
    for t in ("hook_runs", "script_runs", "journal"):
        tb = ARROW_SCHEMAS[t].empty_table()
        for i in range(n):
            d = os.path.join(root, t, f"date=2026-11-{1 + i % 28:02d}", "c1")
            os.makedirs(d, exist_ok=True)
            pq.write_table(tb, os.path.join(d, file_name("bench", i * 10 + 1, i * 10 + 10)))


def in_new_process(root: str) -> float:
    out = subprocess.run([sys.executable, "-c", OPEN, root, str(ROOT)], capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    from collector import archive
    from queries.source import open_source
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "archive")
        build(root, a.files)
        res = {"cold": [], "file": [], "memory": []}
        for _ in range(a.repeat):
            for f in glob.glob(os.path.join(root, ".shapes-*.json")):
                os.unlink(f)
            res["cold"].append(in_new_process(root))  # no cache: reads every footer, writes the files
            res["file"].append(in_new_process(root))  # the .shapes files only
            archive._SHAPES.clear()
            open_source(archive=root).close()
            t = time.perf_counter()
            open_source(archive=root).close()
            res["memory"].append((time.perf_counter() - t) * 1000)
    med = {k: statistics.median(v) for k, v in res.items()}
    n = 3 * a.files + 9
    print(f"open_source over {n:,} files: cold {med['cold']:.0f} ms, .shapes files {med['file']:.0f} ms "
          f"({med['cold'] / med['file']:.1f}x), in-process cache {med['memory']:.0f} ms "
          f"({med['cold'] / med['memory']:.1f}x)")


if __name__ == "__main__":
    main()
