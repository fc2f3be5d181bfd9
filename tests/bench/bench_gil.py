"""The collector and the GIL, side by side: its event loop decodes in pure
Python, so whatever else takes the GIL, or waits for it, slows every batch.

Each measurement alternates its variants round by round (the load of a
shared machine drifts):

1. **commit beside Python**: ``Store.commit`` of the same prebuilt Arrow
   batches alone, and beside a thread that runs pure Python (as the
   collector's event loop does while it decodes), at several thread switch
   intervals (collector/gcpolicy.py).  The ratio (beside / alone) is the
   time the writer loses waiting for the GIL.
2. **archive writes**: the same batches' Parquet files written through a
   Python file object (as before session 11) and through pyarrow's native
   file (``archive.write_parquet``): wall time, and how much of it a
   pure-Python thread beside it could not run (an upper bound on the time
   the writes held the GIL: both cores busy counts too).
3. **Arrow conversion** on the event loop's thread: one array per column
   (``columns.to_arrow_columns``) against one struct array per table
   (``columns.to_arrow``).
4. **end to end**: ``bench_collector.run_ours`` (JetStream -> Parquet fsync
   -> DuckDB commit -> ack) on one server and the same messages, with
   ``gcpolicy.SWITCH_INTERVAL_S`` set to each interval.

Example:
    .venv/bin/python tests/bench/bench_gil.py
    .venv/bin/python tests/bench/bench_gil.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector import gcpolicy  # noqa: E402
from collector.archive import write_parquet  # noqa: E402
from collector.columns import to_arrow, to_arrow_columns  # noqa: E402
from collector.store import Store  # noqa: E402
from emitter import contract as C  # noqa: E402
from tests.bench import bench_collector as B  # noqa: E402

#: 5 ms is Python's default; 0.5 ms was the collector's setting before session 11
INTERVALS = (0.005, 0.0005, 0.0001, 0.00002, 0.000005)


def _label(s: float) -> str:
    return f"{s * 1e3:g} ms" if s >= 0.001 else f"{s * 1e6:g} us"


def _busy(stop, count=None):
    """Pure Python with the GIL held, as the event loop's decode is."""
    while not stop.is_set():
        d = {}
        for i in range(200):
            d[i] = (i, str(i))
        if count is not None:
            count[0] += 1


def _commit_all(arrows, tmp, tag, beside: bool) -> float:
    store = Store(os.path.join(tmp, f"{tag}.duckdb"), consumer="bench")
    stop = threading.Event()
    th = threading.Thread(target=_busy, args=(stop,))
    if beside:
        th.start()
    try:
        t0 = time.perf_counter()
        for b, (_, tables) in arrows:
            store.commit(tables, b.last_seq)
        return time.perf_counter() - t0
    finally:
        stop.set()
        if beside:
            th.join()
        store.close(snapshot=False)


def _batches(msgs, keep_raw):
    now = time.time_ns()
    fake = [B._FakeMsg(s, p, i + 1, now) for i, (s, _, p) in enumerate(msgs)]
    return [B.build_batch(fake[i:i + 2048], "bench", keep_raw, C.MAX_MESSAGE_BYTES)
            for i in range(0, len(fake), 2048)]


def _python_rate(seconds=2.0) -> float:
    """Iterations per second of ``_busy`` with nothing beside it."""
    stop, n = threading.Event(), [0]
    th = threading.Thread(target=_busy, args=(stop, n))
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join()
    return n[0] / seconds


def _beside_python(fn, alone_rate):
    """(seconds fn took, seconds of it a pure-Python thread could not run)."""
    stop, n = threading.Event(), [0]
    th = threading.Thread(target=_busy, args=(stop, n))
    th.start()
    try:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    finally:
        stop.set()
        th.join()
    return dt, dt * max(0.0, 1 - n[0] / dt / alone_rate)


def commit_beside_python(msgs, tmp, rounds):
    arrows = _batches(msgs, False)
    spans = len(msgs) * B.SPANS_PER_MSG
    was = sys.getswitchinterval()
    res = {s: [] for s in INTERVALS}
    try:
        for r in range(rounds):
            for s in INTERVALS if r % 2 == 0 else INTERVALS[::-1]:
                sys.setswitchinterval(s)
                alone = _commit_all(arrows, tmp, f"a{r}{s}", False)
                beside = _commit_all(arrows, tmp, f"b{r}{s}", True)
                res[s].append((alone, beside))
    finally:
        sys.setswitchinterval(was)
    print(f"1. Store.commit of {len(arrows)} batches ({spans:,} spans), alone and beside a pure-Python "
          f"thread ({rounds} alternating rounds):")
    for s, v in res.items():
        a = sum(x for x, _ in v) / len(v)
        b = sum(y for _, y in v) / len(v)
        print(f"   {_label(s):>7}: alone {a / spans * 1e6:5.1f} us/span, beside {b / spans * 1e6:5.1f} "
              f"us/span = {b / a:.2f}x")


def _write_python_file(tb, path):
    """The archive's write before session 11: pyarrow calls the file object's
    ``write`` (in Python, with the GIL) for every page."""
    import pyarrow.parquet as pq
    with open(path, "wb") as fh:
        pq.write_table(tb, fh, compression="zstd", compression_level=1)
        fh.flush()
        os.fdatasync(fh.fileno())


def _write_native(tb, path):
    write_parquet(tb, path, True, compression="zstd", compression_level=1)


def archive_writes(msgs, tmp, rounds):
    tables = [tb for _, ((parts, _)) in _batches(msgs, True) for tabs in parts.values() for tb in tabs.values()]
    spans = len(msgs) * B.SPANS_PER_MSG
    alone = _python_rate()
    ways = {"Python file object": _write_python_file, "native file (write_parquet)": _write_native}
    res = {k: [] for k in ways}
    for r in range(rounds):
        for k in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            d = os.path.join(tmp, f"w{r}{len(res[k])}{k[0]}")
            os.makedirs(d)

            def write_all(sub):
                os.makedirs(os.path.join(d, sub))
                for i, tb in enumerate(tables):
                    ways[k](tb, os.path.join(d, sub, f"{i}.parquet"))

            t0 = time.perf_counter()
            write_all("alone")
            res[k].append((time.perf_counter() - t0, *_beside_python(lambda: write_all("beside"), alone)))
            shutil.rmtree(d)
    print(f"2. archive writes: {len(tables)} Parquet files (zstd, fdatasync) of {spans:,} spans, beside a "
          f"pure-Python thread ({rounds} alternating rounds):")
    for k, v in res.items():
        alone_s, beside_s, held = (sum(x[i] for x in v) / len(v) for i in range(3))
        print(f"   {k:>28}: alone {alone_s / spans * 1e6:5.2f} us/span; beside it {beside_s / spans * 1e6:6.2f} "
              f"us/span, of which the Python thread lost {held / spans * 1e6:5.2f} (the GIL, or both cores busy)")


def arrow_conversion(msgs, rounds):
    rows = [(t, r) for b, _ in _batches(msgs, True) for tabs in b.parts.values() for t, r in tabs.items()]
    spans = len(msgs) * B.SPANS_PER_MSG
    ways = {"one array per column": to_arrow_columns, "one struct array": to_arrow}
    res = {k: [] for k in ways}
    for r in range(rounds + 1):
        for k in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            t0 = time.perf_counter()
            for t, rr in rows:
                ways[k](t, rr)
            if r:  # the first round warms pyarrow up
                res[k].append(time.perf_counter() - t0)
    print(f"3. Arrow conversion of the same rows ({spans:,} spans, {rounds} alternating rounds):")
    ref = sum(res["one array per column"]) / rounds
    for k, v in res.items():
        mean = sum(v) / rounds
        print(f"   {k:>28}: {mean / spans * 1e6:5.2f} us/span = {ref / mean:.2f}x")


def end_to_end(msgs, tmp, rounds):
    n = len(msgs)
    srv = B.NatsServer(store_dir=os.path.join(tmp, "nats")).start()
    res = {s: [] for s in INTERVALS}
    was = gcpolicy.SWITCH_INTERVAL_S
    try:
        asyncio.run(B.publish(srv.url, msgs, wait_acks=True))
        for r in range(rounds):
            for s in INTERVALS if r % 2 == 0 else INTERVALS[::-1]:
                gcpolicy.SWITCH_INTERVAL_S = s
                with contextlib.redirect_stdout(io.StringIO()):  # run_ours' own lines
                    dt, _ = B.run_ours(srv.url, tmp, n, 2048, tag=f"e{r}_{INTERVALS.index(s)}")
                res[s].append(n * B.SPANS_PER_MSG / dt)
    finally:
        gcpolicy.SWITCH_INTERVAL_S = was
        srv.stop()
    print(f"4. end to end, {n:,} messages ({n * B.SPANS_PER_MSG:,} spans), {rounds} alternating rounds:")
    ref = sum(res[0.0005]) / rounds
    for s, v in res.items():
        mean = sum(v) / rounds
        print(f"   {_label(s):>7}: {mean:8,.0f} spans/s = {mean / ref:.2f}x 0.5 ms  "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in v)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages, 2 rounds (~1 min)")
    ap.add_argument("--messages", type=int, default=None, help="hook messages (9 spans each; default 8,000)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    args = ap.parse_args()
    n = args.messages or (2000 if args.quick else 8000)
    rounds = args.rounds or (2 if args.quick else 3)
    tmp = tempfile.mkdtemp(prefix="hookscope-bench-gil-")
    print(f"# bench_gil: {n} messages, {rounds} rounds, this tree's collector "
          f"(its setting: {_label(gcpolicy.SWITCH_INTERVAL_S)}), tmp {tmp}")
    try:
        msgs = B.make_messages(n)
        commit_beside_python(msgs, tmp, rounds)
        archive_writes(msgs, tmp, rounds)
        arrow_conversion(msgs, rounds)
        end_to_end(msgs, tmp, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
