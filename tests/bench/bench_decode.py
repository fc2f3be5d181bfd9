"""The span decoder in C against the Python reference, side by side (apart from `make test`).

    .venv/bin/python tests/bench/bench_decode.py            # 4,000 messages, 5 rounds
    .venv/bin/python tests/bench/bench_decode.py --quick

Same messages (bench_collector's: 256 nodes, 8 scripts a hook, every tenth
hook failing with its output as a span event), same process, rounds
alternating which path goes first, automatic garbage collection off as
while a collector runs (collector/gcpolicy.py).  Two measures, each as µs
per span and as a ratio:

  * decode: ``decode_message`` of every message (C: ``collector._fastspans``
    via ``decode_spans.decode_traces``; Python: ``decode_traces_py``);
  * build_batch: the collector loop's whole step per fetch (decode, identity
    checks, Arrow conversion, journal.ts), in fetches of 1,222 messages.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector import decode as D  # noqa: E402
from collector import decode_spans as S  # noqa: E402
from collector.fetched import build_batch  # noqa: E402
from emitter import contract as C  # noqa: E402
from tests.bench.bench_collector import make_messages  # noqa: E402
from tests.bench.collector_stages import SPANS_PER_MSG, _fake_msgs  # noqa: E402

FETCH = 1222  # messages per fetch in bench_collector's end-to-end runs (16 MiB pull requests)


class _Python:
    """The C path switched off for the duration (``decode_traces`` then runs the reference)."""

    def __enter__(self):
        self.saved = S._fastspans, S._fast_loads
        S._fastspans, S._fast_loads = None, None

    def __exit__(self, *exc):
        S._fastspans, S._fast_loads = self.saved


def _decode(fake):
    t = time.perf_counter()
    for m in fake:
        seq = int(m.reply.split(".")[5])
        D.decode_message(m.data, m.subject, seq, m.received_ns, "1")
    return time.perf_counter() - t


def _build(fake):
    t = time.perf_counter()
    for i in range(0, len(fake), FETCH):
        build_batch(fake[i:i + FETCH], "bench", False, C.MAX_MESSAGE_BYTES)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1,000 messages, 3 rounds")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.rounds = 1000, 3
    if S._fastspans is None:
        raise SystemExit("collector._fastspans is not built: pip install -e . (needs gcc and the Python headers)")
    fake = _fake_msgs(make_messages(args.messages))
    for m in fake:
        m.received_ns = int(m.reply.split(".")[7])
    spans = args.messages * SPANS_PER_MSG
    fast = S.fast_decoder(D._loads)
    taken = sum(fast(m.data, 1, m.received_ns) is not None for m in fake)
    print(f"{args.messages} messages, {spans} spans; the C path takes {taken} of them")
    gc.collect()
    gc.freeze()
    gc.disable()
    res = {(what, path): [] for what in ("decode", "build_batch") for path in ("C", "Python")}
    try:
        _decode(fake[:200]), _build(fake[:200])  # warm both paths
        with _Python():
            _decode(fake[:200])
        for r in range(args.rounds):
            for path in (("C", "Python") if r % 2 == 0 else ("Python", "C")):
                for what, fn in (("decode", _decode), ("build_batch", _build)):
                    if path == "C":
                        dt = fn(fake)
                    else:
                        with _Python():
                            dt = fn(fake)
                    res[(what, path)].append(dt / spans * 1e6)
    finally:
        gc.enable()
        gc.unfreeze()
    for what in ("decode", "build_batch"):
        c, p = res[(what, "C")], res[(what, "Python")]
        mc, mp = sum(c) / len(c), sum(p) / len(p)
        print(f"{what:12s} C {mc:6.2f} µs/span  Python {mp:6.2f} µs/span  = {mp / mc:.2f}x "
              f"(rounds: {', '.join(f'{b / a:.2f}x' for a, b in zip(c, p))})")


if __name__ == "__main__":
    main()
