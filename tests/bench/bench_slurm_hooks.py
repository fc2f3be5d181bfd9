"""Benchmark: what a user feels under the real slurmd, bare vs hookscope-hook.

The time from slurmd starting the prolog to the job running, read from
slurmd's own log (SlurmdDebug=debug2, millisecond timestamps): from
"Processing RPC: REQUEST_LAUNCH_PROLOG" to "Launching batch job N".  The same
prolog directory is run bare (``Prolog=/dir/*``) and through hookscope-hook
(``Prolog=hookscope-hook``, the directory in /etc/hookscope/hookscope.toml),
alternating job by job, for three shapes:

  (a) 1 no-op script        goal: hookscope <= bare + 15 ms
  (b) 10 no-op scripts      goal: hookscope <= bare (ratio <= 1.0)
  (c) 200 no-op scripts     goal: hookscope <= bare (slurmd pays 10 ms per script)

Medians over --reps jobs per shape and mode; the ratio hookscope / bare is
printed.  The Epilog stays a one-script no-op in both modes.  Needs root and
Debian's Slurm (deploy/install-sysdeps.sh); without them it says why and
exits 0.  The journal is emptied between jobs, outside the timed window, as a
running agent would ship it.  /etc/hookscope/hookscope.toml is backed up and
restored, under the Slurm tier's lock.

Run: make bench   (or .venv/bin/python tests/bench/bench_slurm_hooks.py [--reps N] [--shapes 1,10]
[--also LABEL=VENV]).  --also adds another tree's lean hookscope-hook as one more mode, alternating
with the others job by job (a before/after comparison; the recipe in tests/bench/bench_runner.py).
"""

import argparse
import fcntl
import os
import re
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

from tests.slurm.cluster import SlurmCluster, reap_stale  # noqa: E402
from tests.slurm.scenario import CONFIG_HEADER, CONFIG_PATH, hook_binary  # noqa: E402
from tests.tiers import slurm_missing_reason  # noqa: E402

LOCK_PATH = "/tmp/hookscope-slurm-tier.lock"
SHAPES = {"1 script": 1, "10 scripts": 10, "200 scripts": 200}
_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] (.*)$")


def prolog_to_running(log: str, job: int):
    """Seconds from slurmd's REQUEST_LAUNCH_PROLOG to 'Launching batch job N'."""
    start = None
    for line in log.splitlines():
        m = _TS.match(line)
        if not m:
            continue
        t, msg = datetime.fromisoformat(m.group(1)).timestamp(), m.group(2)
        if start is None and msg.endswith("Processing RPC: REQUEST_LAUNCH_PROLOG") and "Start" not in msg:
            start = t
        elif start is not None and msg == f"Launching batch job {job} for UID 0":
            return t - start
    return None


def make_dir(d: Path, n: int) -> None:
    d.mkdir(parents=True)
    os.chmod(d, 0o755)
    for i in range(n):
        p = d / f"{i:03d}-noop"
        p.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(p, 0o755)


class EtcConfig:
    """Hold the tier's lock; back up /etc/hookscope/hookscope.toml, restore it."""

    def __enter__(self):
        self.lock = open(LOCK_PATH, "a")
        print(f"waiting for {LOCK_PATH} ...", flush=True)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.made_dir = not CONFIG_PATH.parent.exists()
        self.old = CONFIG_PATH.read_bytes() if CONFIG_PATH.exists() else None
        if self.old is not None and self.old.startswith(CONFIG_HEADER.encode()):
            self.old = None
        CONFIG_PATH.parent.mkdir(mode=0o755, exist_ok=True)
        return self

    def write(self, text: str) -> None:
        tmp = CONFIG_PATH.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, CONFIG_PATH)

    def __exit__(self, *exc):
        if self.old is not None:
            CONFIG_PATH.write_bytes(self.old)
        else:
            CONFIG_PATH.unlink(missing_ok=True)
            if self.made_dir:
                try:
                    CONFIG_PATH.parent.rmdir()
                except OSError:
                    pass
        self.lock.close()


def one_job(c: SlurmCluster, journal: Path) -> float:
    shutil.rmtree(journal, ignore_errors=True)
    mark = c.log_size("slurmd")
    job = c.sbatch("#!/bin/sh\nexit 0\n", name="bench")
    info = c.wait_job_settled(job, timeout=120)
    if info.get("JobState") != "COMPLETED":
        raise SystemExit(f"bench: job {job} ended {info.get('JobState')}: {c.logs()}")
    c.wait_node({"IDLE"}, 60)
    dt = prolog_to_running(c.log_since("slurmd", mark), job)
    if dt is None:
        raise SystemExit(f"bench: job {job}: no prolog/launch lines in slurmd's log")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=10, help="jobs per shape and mode (default 10)")
    ap.add_argument("--shapes", default="1,10,200", help="numbers of scripts to run (default 1,10,200)")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=VENV",
                    help="also run VENV/bin/hookscope-hook (another tree's lean launcher), job by job")
    args = ap.parse_args(argv)
    shapes = {name: n for name, n in SHAPES.items() if str(n) in args.shapes.split(",")}
    also = dict(spec.partition("=")[::2] for spec in args.also)
    why = slurm_missing_reason()
    if why:
        print(f"bench_slurm_hooks: not run: {why}")
        return 0
    reap_stale()
    root = Path(tempfile.mkdtemp(prefix="hookscope-slurm-"))
    c = SlurmCluster(root, prolog_epilog_timeout=300)
    c.slurmd_debug, c.slurmd_ignore_sigpipe = "debug2", True
    dirs = {name: root / "bench" / f"prolog-{n}" for name, n in shapes.items()}
    for name, n in shapes.items():
        make_dir(dirs[name], n)
    epilog = root / "bench" / "epilog"
    make_dir(epilog, 1)
    journal = root / "bench" / "journal"
    binaries = {"hookscope": str(hook_binary()), **{label: str(Path(venv) / "bin" / "hookscope-hook")
                                                      for label, venv in also.items()}}
    results = {name: {"bare": [], **{mode: [] for mode in binaries}} for name in shapes}
    try:
        with EtcConfig() as etc:
            c.start()
            print(f"Slurm 22.05 (Debian), one node, debug2 log; {args.reps} jobs per shape and mode, alternating")
            for name in shapes:
                etc.write(f"{CONFIG_HEADER}; the original is restored afterwards\n[runner]\n"
                          f'journal_dir = "{journal}"\n\n[runner.dirs]\n'
                          f'prolog_slurmd = "{dirs[name]}"\nepilog_slurmd = "{epilog}"\n')
                for rep in range(args.reps + 1):  # the first pair warms caches, not counted
                    for mode in results[name]:
                        hb = binaries.get(mode)
                        hooks = ({"Prolog": f"{dirs[name]}/*", "Epilog": f"{epilog}/*"} if mode == "bare"
                                 else {"Prolog": hb, "Epilog": hb})
                        c.set_hooks(**hooks)
                        dt = one_job(c, journal)
                        if rep:
                            results[name][mode].append(dt)
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'prolog directory':<14} {'mode':<10} {'bare ms':>9} {'hook ms':>9} {'ratio':>6} {'diff ms':>8}  goal")
    for name in shapes:
        b = statistics.median(results[name]["bare"]) * 1e3
        goal = "<= bare + 15 ms" if shapes[name] == 1 else "<= bare"
        for mode in binaries:
            h = statistics.median(results[name][mode]) * 1e3
            print(f"{name:<14} {mode:<10} {b:9.1f} {h:9.1f} {h / b:6.2f} {h - b:8.1f}  {goal}")
    print("(median of slurmd's own log timestamps, REQUEST_LAUNCH_PROLOG -> 'Launching batch job', ms resolution;"
          f" load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
