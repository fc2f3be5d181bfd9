"""The fast inner loop's record of slow tests (``make test-fast``).

``tests/durations.json`` maps each test id that took at least
:data:`SLOW_S` seconds (setup + call + teardown) to its time, as pytest-split
keeps ``.test_durations``.  ``pytest --fast`` leaves those out; a test not in
the file (a new one) runs.  Regenerate after adding slow tests:

    make durations

which runs the non-Slurm, non-browser tiers with ``--durations=0`` and pipes
pytest's report through ``python -m tests.helpers.durations``.
"""

import json
import re
import sys
from pathlib import Path

SLOW_S = 0.1
FILE = Path(__file__).resolve().parents[1] / "durations.json"
_LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)")


def parse(lines) -> dict:
    """{test id: seconds} summed over setup, call and teardown (pure)."""
    out: dict = {}
    for line in lines:
        m = _LINE.match(line)
        if m:
            out[m.group(2)] = round(out.get(m.group(2), 0.0) + float(m.group(1)), 3)
    return out


def slow_ids(path: Path = FILE) -> set:
    try:
        return set(json.loads(path.read_text()))
    except FileNotFoundError:
        return set()


def main() -> int:
    times = parse(sys.stdin)
    if not times:
        sys.stderr.write("no '--durations=0' lines on stdin: pipe pytest's report in\n")
        return 1
    slow = {k: v for k, v in sorted(times.items()) if v >= SLOW_S}
    FILE.write_text(json.dumps(slow, indent=0) + "\n")
    print(f"{FILE}: {len(slow)} of {len(times)} timed tests at or over {SLOW_S} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
