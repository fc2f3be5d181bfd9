"""Benchmark: hookscope's runner vs Debian run-parts on the same directory.

Side by side in one run, interleaved (run-parts, hookscope-hook, hookscope run,
run-parts, ...), medians over many repetitions, ratio printed:

  (a) 10 no-op scripts           goal <= 2.0x run-parts (issue 11), > 2.5x is a defect
  (b) 10 scripts sleeping 20 ms  goal <= 1.05x
  (c) one failing script printing 50 MB, bare vs hookscope-hook, both with
      their output read from a pipe to EOF as slurmd reads it: goal <= 1.5x
      (redaction and tail keeping are linear; docs/runner.md)

hookscope runs through the installed lean launchers, i.e. exactly what
slurm.conf calls: ``hookscope-hook`` (context from SLURM_SCRIPT_CONTEXT,
directory and run-parts layout from a config file, journal with the default
fdatasync; also with ``fsync = false`` to show what the one fdatasync
costs) and ``hookscope run --layout run-parts --dir ...``.  The journal
files are removed between repetitions, outside the timing, as a running
agent would ship them.  ``python -I -S -c pass`` is printed as the floor: the
interpreter start-up no Python runner can go below.

The second floor row is the same ``python -I -S -c pass`` started the way the
``hookscope-hook`` launcher starts Python (a /bin/sh that reads the original
signal masks, then forks Python): the launcher's own cost.  The third is the
least any Python runner can do (``_MINIMAL``: import os, posix_spawn and reap
each script; no launcher, journal, pipes or fidelity): where its ratio is at
or above a goal, no Python runner can meet that goal on this machine.

Run: make bench   (or .venv/bin/python tests/bench/bench_runner.py [--reps N] [--only a|b|c]
[--also LABEL=VENV]).  --also adds another tree's lean launcher as one more row,
side by side, e.g. the runner before a change (a copy of its emitter/ in /tmp/prev):
  mkdir -p /tmp/prev/venv/bin && ln -s "$(readlink -f .venv/bin/python)" /tmp/prev/venv/bin/python
  (cd /tmp/prev && /tmp/prev/venv/bin/python -m emitter.launcher install /tmp/prev/venv)
  .venv/bin/python tests/bench/bench_runner.py --also before=/tmp/prev/venv
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
VENV_BIN = Path(os.environ.get("HOOKSCOPE_VENV", ROOT / ".venv")) / "bin"
#: --also LABEL=VENV: another tree's lean hookscope-hook, run side by side (a before/after comparison)
ALSO = {}


def spawn_wait(argv, env):
    """Wall time of one process run, with as little harness overhead as possible."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1),
                                                                (os.POSIX_SPAWN_DUP2, devnull, 0)])
        _, status, ru = os.wait4(pid, 0)
        dt = time.perf_counter() - t0
    finally:
        os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {argv} exited {os.waitstatus_to_exitcode(status)}")
    # CPU of the process and every descendant it reaped: far less sensitive
    # than wall time to other load on a shared machine.
    return dt, ru.ru_utime + ru.ru_stime


def spawn_drain(argv, env):
    """Wall time of one process whose stdout+stderr is a pipe read to EOF (slurmd's way)."""
    r, w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                                (os.POSIX_SPAWN_DUP2, w, 1),
                                                                (os.POSIX_SPAWN_DUP2, w, 2)])
        os.close(w)
        w = None
        n = 0
        while True:
            b = os.read(r, 1 << 20)
            if not b:
                break
            n += len(b)
        _, status = os.waitpid(pid, 0)
        dt = time.perf_counter() - t0
    finally:
        os.close(r)
        os.close(devnull)
        if w is not None:
            os.close(w)
    return dt, os.waitstatus_to_exitcode(status), n


def bench_flood(base, reps):
    """(c): a failing script printing 50 MB, bare vs through hookscope-hook."""
    d = base / "flood"
    d.mkdir()
    script = d / "10-flood"
    script.write_text("#!/bin/sh\nhead -c 52428800 /dev/zero | tr '\\0' x\nexit 3\n")
    script.chmod(0o755)
    journal = base / "journal-flood"
    cfg = base / "flood.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{journal}"\n[runner.dirs]\nprolog_slurmd = "{d}"\n')
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "1"}
    cmds = {"bare script": ([str(script)], env),
            "hookscope-hook": ([str(VENV_BIN / "hookscope-hook")],
                               dict(env, SLURM_SCRIPT_CONTEXT="prolog_slurmd", HOOKSCOPE_CONFIG=str(cfg)))}
    for name, venv in ALSO.items():
        cmds[f"hookscope-hook ({name})"] = ([str(Path(venv) / "bin" / "hookscope-hook")], cmds["hookscope-hook"][1])
    times = {k: [] for k in cmds}
    for i in range(2 + reps):
        for name, (argv, e) in cmds.items():
            dt, code, n = spawn_drain(argv, e)
            clean_journal(journal)
            if code != 3 or n != 52428800:
                raise SystemExit(f"bench: {name} gave status {code} and {n} bytes, not 3 and 52428800")
            if i >= 2:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["bare script"]
    print(f"\n(c: one failing script, 50 MB of output)  {reps} interleaved repetitions, medians; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, m in med.items():
        print(f"  {name:<36} {m * 1000:8.2f} ms   {m / ref:5.2f}x")
    return med["hookscope-hook"] / ref


def make_dir(base, name, body):
    d = base / name
    d.mkdir()
    for i in range(10):
        p = d / f"{i:02d}-script"
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
    return d


def clean_journal(j):
    if j.exists():
        for p in j.glob("*.jsonl"):
            p.unlink()


#: The least any Python runner does (issue 11's reference): ``os``, then each
#: script started with posix_spawn and reaped, in run-parts order; no
#: launcher, config, journal, output pipe or process-state fidelity.
_MINIMAL = ("import os, sys; d = sys.argv[1]\n"
            "for n in sorted(os.listdir(d)):\n"
            "    p = os.path.join(d, n); pid = os.posix_spawn(p, [p], {})\n"
            "    if os.waitpid(pid, 0)[1]: os._exit(1)\n"
            "os._exit(0)")


def bench_case(label, hook_dir, base, reps, warmup=5):
    journal = base / f"journal-{hook_dir.name}"
    cfg = base / f"{hook_dir.name}.toml"
    cfg.write_text(f'[runner]\nlayout = "run-parts"\njournal_dir = "{journal}"\n'
                   f'[runner.dirs]\nprolog_slurmd = "{hook_dir}"\n')
    cfg_nosync = base / f"{hook_dir.name}-nosync.toml"
    cfg_nosync.write_text(cfg.read_text().replace("[runner]\n", "[runner]\nfsync = false\n"))
    run_parts = shutil.which("run-parts") or "/usr/bin/run-parts"
    base_env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "1", "SLURM_JOB_USER": "root"}
    hook_env = dict(base_env, SLURM_SCRIPT_CONTEXT="prolog_slurmd", HOOKSCOPE_CONFIG=str(cfg))
    del hook_env["PATH"]  # slurmd's case: no PATH at all
    from emitter.launcher import _READ_MASKS

    floor_sh = base / "floor-launcher.sh"  # the launcher's own cost: its shell, read loop and fork
    floor_sh.write_text(f"#!/bin/sh\n{_READ_MASKS}\n'{VENV_BIN / 'python'}' -IS -c pass \"$i\" \"$b\" \"$$\"\n"
                        "exit $?\n")
    floor_sh.chmod(0o755)
    cmds = {
        "floor: python -I -S -c pass": ([str(VENV_BIN / "python"), "-I", "-S", "-c", "pass"], base_env),
        "floor through the /bin/sh launcher": ([str(floor_sh)], base_env),
        "floor: minimal Python runner": ([str(VENV_BIN / "python"), "-I", "-S", "-c", _MINIMAL, str(hook_dir)],
                                         base_env),
        "run-parts --exit-on-error": ([run_parts, "--exit-on-error", str(hook_dir)], base_env),
        "hookscope-hook (slurm.conf)": ([str(VENV_BIN / "hookscope-hook")], hook_env),
        "hookscope-hook, fsync = false": ([str(VENV_BIN / "hookscope-hook")],
                                          dict(hook_env, HOOKSCOPE_CONFIG=str(cfg_nosync))),
        **{f"hookscope-hook ({name})": ([str(Path(venv) / "bin" / "hookscope-hook")], hook_env)
           for name, venv in ALSO.items()},
        "hookscope run --layout run-parts": ([str(VENV_BIN / "hookscope"), "run", "--context", "prolog_slurmd",
                                              "--layout", "run-parts", "--dir", str(hook_dir), "--journal",
                                              str(journal)], dict(base_env, HOOKSCOPE_CONFIG=str(cfg))),
    }
    times = {k: [] for k in cmds}
    cpu = {k: [] for k in cmds}
    for i in range(warmup + reps):
        for name, (argv, env) in cmds.items():
            dt, ct = spawn_wait(argv, env)
            clean_journal(journal)
            if i >= warmup:
                times[name].append(dt)
                cpu[name].append(ct)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    ref = med["run-parts --exit-on-error"]
    cref = cmed["run-parts --exit-on-error"]
    print(f"\n({label})  {reps} interleaved repetitions, medians; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"  {'':<36} {'wall':>8}      {'p10':>7}  {'p90':>7}   {'ratio':>6}   {'cpu':>7}     {'ratio':>6}")
    for name, m in med.items():
        q = statistics.quantiles(times[name], n=10)
        print(f"  {name:<36} {m * 1000:8.2f} ms   {q[0] * 1000:7.2f}  {q[-1] * 1000:7.2f}   "
              f"{m / ref:5.2f}x   {cmed[name] * 1000:7.2f} ms  {cmed[name] / cref:5.2f}x")
    return (med["hookscope-hook (slurm.conf)"] / ref, med["hookscope run --layout run-parts"] / ref,
            med["floor: minimal Python runner"] / ref)


# ------------------------------------------------------------------ --profile
_PHASES = r"""
import gc; gc.disable()  # as the lean launchers do (emitter/launcher.py)
import sys, time
clock = time.process_time if sys.argv[1] == "cpu" else time.perf_counter
T = [clock()]
sys.path.insert(0, sys.argv[2])
from emitter import process
import emitter.hook, emitter.runner, emitter.config
T.append(clock())
from emitter import config as cf, runner, layouts
cfg = cf.load_config(); T.append(clock())
s = cf.runner_settings(cfg); dirs = cf.context_dirs(s, "prolog_slurmd")
knobs = layouts.knobs_for(s["layout"], keep_going=s["keep_going"], **{k: s[k] for k in (
    "order", "stop_on_failure", "non_executable", "require_shebang", "name_filter", "empty")})
strict = cf.strict_enabled(s["strict"])
entries, warnings = layouts.plan(dirs, knobs, strict=strict); T.append(clock())
journal = runner.open_journal(s); T.append(clock())
r = runner.Runner(s, "prolog_slurmd", dirs, knobs, strict, journal=journal); T.append(clock())
r.run(entries, warnings); T.append(clock())
journal.close(); T.append(clock())
print(" ".join("%.3f" % ((b - a) * 1000) for a, b in zip(T, T[1:])))
"""
_PHASE_NAMES = ("imports", "load_config (cached)", "plan", "journal open", "Runner()", "run (10 scripts)",
                "journal close (fdatasync)")


def _spawns(n, script, how):
    from emitter import process as P

    launch = P.Launch(P.origin(), P.SLURM, {}, None, None)
    t0 = time.perf_counter()
    for _ in range(n):
        if how == "posix_spawn":
            os.waitpid(os.posix_spawn(script, [script], {}), 0)
        else:
            ch = P.spawn(script, [script], launch, False)
            os.waitpid(ch.pid, 0)
            ch.close()
    return time.perf_counter() - t0


def profile(base, reps):
    """Where a cold hook of (a) spends its time: in-process phase stamps (CPU and
    wall, minimum over ``reps`` fresh processes), ten bare spawns from Python,
    and the imports with and without interpreter finalization."""
    noop = make_dir(base, "noop", "exit 0")
    journal = base / "journal-profile"
    cfg = base / "profile.toml"
    cfg.write_text(f'[runner]\nlayout = "run-parts"\njournal_dir = "{journal}"\n'
                   f'[runner.dirs]\nprolog_slurmd = "{noop}"\n')
    env = {"LC_ALL": "C", "SLURM_JOB_ID": "1", "SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "HOOKSCOPE_CONFIG": str(cfg)}
    py = str(VENV_BIN / "python")
    import subprocess

    print(f"\n(profile: a cold hook of 10 no-op scripts, in-process stamps; minimum and median of {reps} "
          f"fresh processes; load average {os.getloadavg()[0]:.1f})")
    for clock in ("cpu", "wall"):
        rows = []
        for _ in range(reps):
            out = subprocess.run([py, "-I", "-S", "-c", _PHASES, clock, str(ROOT)], env=env, capture_output=True,
                                 text=True, check=True).stdout
            rows.append([float(x) for x in out.split()])
            clean_journal(journal)
        for i, name in enumerate(_PHASE_NAMES):
            col = sorted(r[i] for r in rows)
            print(f"  {clock:<4} {name:<28} min {col[0]:6.2f} ms  median {col[len(col) // 2]:6.2f} ms")
    script = str(noop / "00-script")
    sp = {how: statistics.median(_spawns(10, script, how) for _ in range(reps)) for how in ("posix_spawn", "spawn")}
    print(f"  ten no-op scripts started and reaped from Python: os.posix_spawn {sp['posix_spawn'] * 1000:.2f} ms, "
          f"emitter.process.spawn {sp['spawn'] * 1000:.2f} ms (median of {reps})")
    pre = (f"import gc; gc.disable(); import sys, os; sys.path.insert(0, {str(ROOT)!r}); "
           "import emitter.runner, emitter.config, emitter.hook")
    cmds = {"python -I -S -c pass": "pass", "+ the hot path's imports": pre, "+ the imports, then os._exit(0)":
            pre + "; os._exit(0)"}
    t = {k: statistics.median(spawn_wait([py, "-I", "-S", "-c", c], {})[0] for _ in range(reps * 2))
         for k, c in cmds.items()}
    for k, v in t.items():
        print(f"  {k:<36} {v * 1000:6.2f} ms wall (median of {reps * 2})")
    _import_costs(py, reps * 4)


#: The hot path's imports in the order a hook first needs them (the stdlib C
#: extensions first, so each project module's figure is its own).
_HOT_IMPORTS = ("os", "_sha256", "_json", "select", "fcntl", "_posixsubprocess", "emitter", "emitter.contract",
                "emitter.process", "emitter.hook", "emitter.config", "emitter.settings", "emitter.journal_chain",
                "emitter.journal", "emitter.layouts", "emitter.pump", "emitter.runner")
_TIME_IMPORTS = r"""
import sys, time
if sys.argv[1] == "off":
    import gc; gc.disable()
sys.path.insert(0, sys.argv[2])
clock, out = time.process_time, []
for m in sys.argv[3:]:
    t = clock(); __import__(m); out.append(clock() - t)
print(" ".join("%.1f" % (x * 1e6) for x in out))
"""


#: The same imports after the lean launchers' hot bundle (emitter/launcher.py
#: _LOAD_HOT, argv[3]) has loaded what it holds; timed together.
_TIME_BUNDLE = r"""
import gc; gc.disable()
import sys, time
sys.path.insert(0, sys.argv[1])
clock = time.process_time
t = clock()
exec(sys.argv[2])
for m in sys.argv[3:]:
    __import__(m)
print("%.1f" % ((clock() - t) * 1e6))
"""


def _hot_modules(root):
    # a module that tree does not have (yet) is left out, not an error
    return [m for m in _HOT_IMPORTS if not m.startswith("emitter.") or (root / (m.replace(".", "/") + ".py")).exists()]


def _import_costs(py, n):
    """CPU of each hot-path import, first in a fresh process, and of all of them
    with the cyclic GC on and off (the lean launchers turn it off), and through
    the tree's hot bundle as its lean launchers load it (GC off), interleaved; the
    same totals for each --also tree (its root: the directory above its VENV; a
    tree without a bundle, from before it, has no bundle row)."""
    import subprocess

    trees = {"": ROOT, **{f" ({name})": Path(venv).resolve().parent for name, venv in ALSO.items()}}
    venvs = {"": VENV_BIN.parent, **{f" ({name})": Path(venv) for name, venv in ALSO.items()}}
    loads = {label: _bundle_loader(py, trees[label], venvs[label]) for label in trees}
    rows = {(label, mode): [] for label in trees for mode in ("on", "off", "bundle")
            if mode != "bundle" or loads[label]}
    for _ in range(n):
        for label, mode in rows:
            root = trees[label]
            args = [_TIME_BUNDLE, str(root), loads[label]] if mode == "bundle" else [_TIME_IMPORTS, mode, str(root)]
            out = subprocess.run([py, "-I", "-S", "-c", *args, *_hot_modules(root)],
                                 capture_output=True, text=True, check=True).stdout
            rows[label, mode].append([float(x) for x in out.split()])
    mods = _hot_modules(ROOT)
    print(f"  first import, CPU, GC off (minimum and median of {n} fresh processes):")
    for i, m in enumerate(mods):
        col = sorted(r[i] for r in rows["", "off"])
        print(f"    {m:<34} min {col[0]:7.0f} us  median {col[len(col) // 2]:7.0f} us")
    for (label, mode), r in rows.items():
        tot = sorted(sum(x) for x in r)
        how = "hot bundle" if mode == "bundle" else "GC " + mode
        print(f"  {'all of them' + label + ', ' + how:<36} min {tot[0] / 1000:6.2f} ms  "
              f"median {tot[len(tot) // 2] / 1000:6.2f} ms")


def _bundle_loader(py, root, venv):
    """The -c text with which a tree's lean launchers load its hot bundle, or None."""
    import subprocess

    path = Path(venv) / "lib" / "hookscope-hot.marshal"
    launcher = root / "emitter" / "launcher.py"
    if not path.exists() or "_LOAD_HOT" not in launcher.read_text():
        return None
    return subprocess.run([py, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(root)!r}); from "
                           f"emitter.launcher import _LOAD_HOT; print(_LOAD_HOT.format(bundle={str(path)!r}))"],
                          capture_output=True, text=True, check=True).stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200, help="repetitions for (a); (b) uses reps/5, (c) reps/20")
    ap.add_argument("--only", choices=("a", "b", "c"), help="run one case")
    ap.add_argument("--profile", action="store_true",
                    help="instead: where a cold hook of (a) spends its time (phases, spawns, imports with "
                         "and without the launchers' hot bundle, exit)")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=VENV",
                    help="also run VENV/bin/hookscope-hook (another tree's lean launcher), side by side")
    args = ap.parse_args(argv)
    for spec in args.also:
        name, _, venv = spec.partition("=")
        ALSO[name] = venv
    if "lean launcher" not in (VENV_BIN / "hookscope-hook").read_text()[:200]:
        print(f"note: {VENV_BIN}/hookscope-hook is pip's wrapper, not the lean launcher; "
              f"run 'python -m emitter.launcher install .venv' first")
    base = Path(tempfile.mkdtemp(prefix="hookscope-bench-"))
    if args.profile:
        try:
            profile(base, max(5, args.reps // 10))
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return 0
    verdict = []
    a_hook = None
    try:
        if args.only in (None, "a"):
            noop = make_dir(base, "noop", "exit 0")
            a_hook, a_run, a_min = bench_case("a: 10 no-op scripts", noop, base, args.reps)
            verdict.append(f"  (a) hookscope-hook {a_hook:.2f}x, hookscope run {a_run:.2f}x run-parts  (goal <= 2.0x, "
                           f"defect > 2.5x): {'goal met' if a_hook <= 2.0 else 'within bound' if a_hook <= 2.5 else 'DEFECT'}"
                           f"; a minimal Python runner {a_min:.2f}x")
        if args.only in (None, "b"):
            sleepy = make_dir(base, "sleep20", "sleep 0.02")
            b_hook, b_run, b_min = bench_case("b: 10 scripts x 20 ms", sleepy, base, max(10, args.reps // 5))
            verdict.append(f"  (b) hookscope-hook {b_hook:.3f}x, hookscope run {b_run:.3f}x run-parts  "
                           f"(goal <= 1.05x): {'goal met' if b_hook <= 1.05 else 'missed'}; "
                           f"a minimal Python runner {b_min:.3f}x")
        if args.only in (None, "c"):
            c_hook = bench_flood(base, max(5, args.reps // 20))
            verdict.append(f"  (c) hookscope-hook {c_hook:.2f}x the bare script  (goal <= 1.5x): "
                           f"{'goal met' if c_hook <= 1.5 else 'missed'}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\nverdict:")
    print("\n".join(verdict))
    return 0 if a_hook is None or a_hook <= 2.5 else 1


if __name__ == "__main__":
    sys.exit(main())
