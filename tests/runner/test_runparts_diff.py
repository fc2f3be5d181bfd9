"""Issue 11, the ``run-parts`` layout against Debian's /usr/bin/run-parts.

Each case is one directory run twice, side by side: ``run-parts
--exit-on-error DIR`` (what the layout's comment says SUNK's run-parts.sh
calls; plain ``run-parts DIR`` for the ``--keep-going`` cases) and
``hookscope run --layout run-parts --dir DIR`` (the installed CLI, its own
journal, an empty config).  Both start from the same environment, stdin
(/dev/null), cwd and umask 077, and are compared on: exit status, stdout and
stderr byte for byte (run-parts' ``run-parts: X exited with return code N``
lines included), which scripts ran in what order, the probe's process state
and environment (tests/slurm/probe.pl), what background children did
afterwards, and the duration within a tolerance.

The cases are the Slurm tier's (tests/slurm/fidelity_cases.py) that mean
something without Slurm, with run-parts' own name rules, plus run-parts'
specific ones: name filter, umask, broken symlink, daemons that outlive a
script.
"""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tiers import require

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "slurm" / "probe.pl"
RUN_PARTS = "/usr/bin/run-parts"
HOOKSCOPE = Path(sys.executable).parent / "hookscope"
#: Same environment for both: what cron or a dispatcher script would pass on.
#: A value that is not UTF-8 must pass through unchanged too.
ENV = {b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin", b"HOME": b"/root", b"LOGNAME": b"root",
       b"SLURM_SCRIPT_CONTEXT": b"prolog_slurmd", b"SLURM_JOB_ID": b"42", b"HS_NOT_UTF8": b"\xff\xfe-\xc3"}
TOL_ABS_S, TOL_REL = 0.5, 0.3


@dataclass
class RPCase:
    id: str
    files: dict  # name -> body (shell, after the marker line) | ("raw", bytes) | ("link", target) | ("dir",) | (body, mode)
    keep_going: bool = False
    linger: float = 0.0
    outside: dict = field(default_factory=dict)  # name -> body (executable, in a sibling directory)
    why: str = ""


SLOW = 0.3
CASES = [
    RPCase("probe", {"10-probe": ("probe",), "20-ok": "exit 0\n"}, why="process state byte for byte"),
    RPCase("order", {"b": "", "a": "", "10-x": "", "2-y": "", "B_up": "", "a-1": "", "_u": ""},
           why="ascending C-locale order"),
    RPCase("name-filter", {"10-ok": "", "20.sh": "", "30 sp": "", ".hidden": "", "40~": "", "50-x.dpkg-old": "",
                           "60-ünï": "", b"70-new\nline": ""}, why="^[A-Za-z0-9_-]+$ only"),
    RPCase("non-executable", {"10-ok": "", "20-noexec": ("exit 0\n", 0o644), "30-ok": ""},
           why="non-executables are skipped silently"),
    RPCase("subdir", {"10-ok": "", "20-dir": ("dir",), "30-ok": ""}, why="directories are skipped"),
    RPCase("fail-stops", {"10-first": "", "20-fails": "echo oops >&2\nexit 3\n", "30-never": ""},
           why="--exit-on-error: stop, report line, exit status"),
    RPCase("fail-keep-going", {"10-first": "", "20-fails": "exit 3\n", "30-after": ""}, keep_going=True,
           why="without --exit-on-error: run all, exit 1"),
    RPCase("keep-going-two-failures", {"10-a": "exit 2\n", "20-ok": "", "30-b": "echo b-err >&2\nexit 4\n"},
           keep_going=True, why="without --exit-on-error: a report line per failure, exit 1"),
    RPCase("keep-going-signal", {"10-term": "kill -TERM $$\n", "20-after": ""}, keep_going=True,
           why="a signal without --exit-on-error"),
    RPCase("keep-going-skips", {"10-noexec": ("exit 0\n", 0o644), "20.sh": "", "30-dir": ("dir",), "40-ok": ""},
           keep_going=True, why="the same files skipped without --exit-on-error"),
    RPCase("exit-255", {"10-255": "exit 255\n"}, why="exit code 255"),
    RPCase("exit-256", {"10-256": "exit 256\n"}, why="exit 256 is 0"),
    RPCase("signal-term", {"10-term": "kill -TERM $$\n", "20-never": ""}, why="uncaught signal report line"),
    RPCase("signal-kill", {"10-kill": "kill -KILL $$\n"}, why="SIGKILL"),
    RPCase("no-shebang", {"10-nosh": ("raw", b"echo x\n")}, why="exec format error"),
    RPCase("missing-interpreter", {"10-missing": ("raw", b"#!/nonexistent/interp\n")}, why="#! names no file"),
    RPCase("broken-symlink", {"10-ok": "", "20-dangling": ("link", "{O}/missing")},
           why="run-parts: error and exit 1 before running anything"),
    RPCase("symlink-outside", {"10-link": ("link", "{O}/target")}, outside={"target": "exit 0\n"},
           why="a symlink to a script outside the directory runs"),
    RPCase("umask", {"10-umask": "[ \"$(umask)\" = 0022 ] || { umask >&2; exit 6; }\n"},
           why="run-parts forces umask 022"),
    RPCase("daemon-survives", {
        "10-start": "/bin/sleep 5 >/dev/null 2>&1 &\necho $! > {D}/daemon.pid\n",
        "20-check": "kill -0 \"$(cat {D}/daemon.pid)\" || exit 9\n"},
        why="background daemons survive across scripts under run-parts"),
    RPCase("bg-holds-stdout", {"10-bg": "(/bin/sleep 1; echo late >> {M}) &\n"}, linger=1.5,
           why="run-parts does not wait for children holding stdout"),
    RPCase("stdin-write", {"10-w": "set -e\necho probe >&0\n"}, why="stdin as the caller gave it"),
    RPCase("stdin-read", {"10-r": "/bin/cat\n"}, why="stdin readers"),
    RPCase("locale", {"10-wc": "[ \"$(printf '\\303\\251' | wc -m)\" = 2 ] || exit 9\n"},
           why="no locale added"),
    RPCase("sigpipe", {"10-pipe": ("bash", "set -o pipefail\nseq 1 1000000 | head -1 >/dev/null\n")},
           why="signal dispositions as inherited"),
    RPCase("invalid-utf8", {"10-bad": "printf '\\377\\376 bad \\300\\n'\nexit 2\n"}, why="bytes pass through"),
    RPCase("flood", {"10-flood": "head -c 2000000 /dev/zero | tr '\\0' x\necho\nexit 1\n"}, why="2 MB of output"),
    RPCase("output-interleave", {"10-a": "echo out1\necho err1 >&2\necho out2\n"}, why="stdout and stderr kept apart"),
    RPCase("slow", {"10-a": f"/bin/sleep {SLOW}\n", "20-b": f"/bin/sleep {SLOW}\n"}, why="duration"),
    RPCase("200-scripts", {f"{i:03d}": "" for i in range(200)}, why="200 no-op scripts"),
    RPCase("empty-dir", {}, why="an empty directory succeeds"),
]


def _build(base: Path, case: RPCase) -> Path:
    d, out = base / "parts", base / "outside"
    for p in (d, out):
        p.mkdir(parents=True)
        os.chmod(p, 0o755)
    marker = base / "ran"
    marker.write_text("")
    subst = {"{M}": str(marker), "{O}": str(out), "{D}": str(base)}

    def fill(s):
        for k, v in subst.items():
            s = s.replace(k, v)
        return s

    for name, body in case.outside.items():
        (out / name).write_text(f"#!/bin/sh\necho {name} >> {marker}\n" + fill(body))
        os.chmod(out / name, 0o755)
    for name, spec in case.files.items():
        path = os.path.join(os.fsencode(d), name if isinstance(name, bytes) else name.encode())
        tag = name.decode(errors="replace") if isinstance(name, bytes) else name
        mode = 0o755
        if isinstance(spec, tuple) and spec[0] == "dir":
            os.mkdir(path)
            continue
        if isinstance(spec, tuple) and spec[0] == "link":
            os.symlink(fill(spec[1]), path)
            continue
        if isinstance(spec, tuple) and spec[0] == "raw":
            data = spec[1]
        elif isinstance(spec, tuple) and spec[0] == "probe":
            data = PROBE.read_bytes().replace(b"__OUT__", os.fsencode(base / "probe"))
        elif isinstance(spec, tuple) and spec[0] == "bash":
            data = f"#!/bin/bash\necho '{tag}' >> {marker}\n{fill(spec[1])}".encode()
        else:
            body, mode = spec if isinstance(spec, tuple) else (spec, 0o755)
            data = f"#!/bin/sh\necho '{tag}' >> {marker}\n{fill(body)}".encode()
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    return d


def _run(argv, base: Path, case: RPCase) -> dict:
    t0 = time.monotonic()
    p = subprocess.run(argv, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                       preexec_fn=lambda: os.umask(0o077), timeout=120)
    took = time.monotonic() - t0
    if case.linger:
        time.sleep(case.linger)
    probe = {}
    for suffix in ("state", "env"):
        f = base / f"probe.{suffix}"
        probe[suffix] = f.read_bytes() if f.exists() else None
    return {"status": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
            "ran": (base / "ran").read_text(errors="replace").splitlines(), "probe": probe, "seconds": took}


def _hookscope_argv(d: Path, base: Path, case: RPCase, config: Path) -> list:
    argv = [str(HOOKSCOPE), "run", "--layout", "run-parts", "--dir", str(d), "--context", "prolog_slurmd",
            "--journal", str(base / "journal"), "--config", str(config)]
    return argv + (["--keep-going"] if case.keep_going else [])


@pytest.fixture(scope="module")
def empty_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "hookscope.toml"
    p.write_text("")
    return p


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_runparts_layout_matches_debian_run_parts(case, tmp_path, empty_config):
    require(os.access(RUN_PARTS, os.X_OK), f"{RUN_PARTS} is missing (Debian's debianutils)")
    require(HOOKSCOPE.exists(), f"{HOOKSCOPE} is not installed (pip install -e .)")
    results = {}
    for who in ("run-parts", "hookscope"):
        base = tmp_path / who
        d = _build(base, case)
        # the same directory path in both runs, so names in report lines compare
        live = tmp_path / "live"
        if live.exists() or live.is_symlink():
            live.unlink()
        live.symlink_to(d)
        if who == "run-parts":
            argv = [RUN_PARTS] + ([] if case.keep_going else ["--exit-on-error"]) + [str(live)]
        else:
            argv = _hookscope_argv(live, base, case, empty_config)
        results[who] = _run(argv, base, case)
    a, b = results["run-parts"], results["hookscope"]
    diffs = []
    for k in ("status", "stdout", "stderr", "ran"):
        if a[k] != b[k]:
            diffs.append(f"{k}: run-parts {_short(a[k])}, hookscope {_short(b[k])}")
    for k in ("state", "env"):
        if a["probe"][k] != b["probe"][k]:
            diffs.append(f"probe {k}: " + _probe_diff(a["probe"][k], b["probe"][k]))
    tol = max(TOL_ABS_S, TOL_REL * a["seconds"])
    if b["seconds"] - a["seconds"] > tol:
        diffs.append(f"duration: run-parts {a['seconds']:.3f} s, hookscope {b['seconds']:.3f} s (tolerance {tol:.2f} s)")
    assert not diffs, f"{case.id} ({case.why}) differs from Debian run-parts:\n  - " + "\n  - ".join(diffs)


def _short(v):
    r = repr(v)
    return r if len(r) < 400 else r[:200] + " ... " + r[-150:]


def _probe_diff(a, b):
    if a is None or b is None:
        return f"run-parts {'none' if a is None else 'ran'}, hookscope {'none' if b is None else 'ran'}"
    sep = b"\0" if b"\0" in a + b else b"\n"
    la, lb = a.split(sep), b.split(sep)
    return "; ".join([f"run-parts only {x!r}" for x in la if x not in lb]
                     + [f"hookscope only {x!r}" for x in lb if x not in la]) or "order differs"


def test_case_table():
    assert len(CASES) >= 25
    assert shutil.which("run-parts") or os.path.exists(RUN_PARTS)
