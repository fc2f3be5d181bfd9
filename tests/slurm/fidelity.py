"""The differential fidelity tier: one hook directory, run by the real slurmd
twice, bare (``Prolog=/dir/*``) and through ``hookscope-hook``, and compared.

A case (``fidelity_cases.py``) is a hook directory (prolog or epilog) built
from ``Entry`` items: scripts, raw files, symlinks, sub-directories.  Every
generated shell script first appends its tag to a marker file, so "which
scripts ran, in what order" needs neither the journal nor slurmd's log.  The
``probe`` entry is ``probe.pl``, which writes the process state it inherited.

``run_all`` runs the selected cases in one mode against the session cluster,
one job per case; the hook directories always sit at the same two paths
(``<base>/prolog``, ``<base>/epilog``), so slurm.conf and hookscope.toml stay
fixed within a mode and a script's own path is the same in both modes.  The
observation of one run is an ``Obs``; ``compare`` lists every difference.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.slurm.cluster import FINAL_STATES

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "probe.pl"

#: PrologEpilogTimeout of the bare deployment (s): scaled down from the
#: issue's 8 s so that timeout cases stay fast; every case that must pass
#: finishes each script well inside it.
T_BARE = 3
#: PrologEpilogTimeout of the hookscope deployment.  slurmd's one timer covers
#: the whole runner, so the wrapper needs more than the per-script value (what
#: ``hookscope plan`` tells a site to set); the runner applies T_BARE per
#: script itself (``[runner] timeout_s``).  Larger than any case's total.
T_HOOKSCOPE = 120
#: Duration tolerance: |hookscope - bare| <= max(TOL_ABS_S, TOL_REL * bare).
#: The semantic differences the tier must see (a child holding the pipe for
#: 3 s, a timeout of 3 s) are larger; load noise on a shared 2-core machine
#: stays below it.
TOL_ABS_S = 1.0
TOL_REL = 0.3

JOB = "#!/bin/sh\necho job-ran\n"
HOOKS = ("prolog", "epilog")
CONTEXT = {"prolog": "prolog_slurmd", "epilog": "epilog_slurmd"}
PARAM = {"prolog": "Prolog", "epilog": "Epilog"}


@dataclass
class Entry:
    """One directory entry of a case.

    kind: ``sh`` (``body`` under ``#!/bin/sh`` after the marker line),
    ``bash`` (same under ``#!/bin/bash``), ``raw`` (``data`` verbatim, no
    marker), ``probe`` (probe.pl), ``link`` (symlink to ``target``, where
    ``{O}`` is the case's outside directory), ``dir`` (a sub-directory)."""

    name: str | bytes
    kind: str = "sh"
    body: str = "exit 0\n"
    data: bytes = b""
    mode: int = 0o755
    target: str = ""
    tag: str | None = None  # marker tag; default: the name
    owner: int | None = None  # uid to chown to (default: root, the tier's user)


@dataclass
class Case:
    id: str
    hook: str  # "prolog" | "epilog"
    entries: list
    #: seconds to wait after the hook before observing (background children)
    linger: float = 0.0
    #: hookscope may be faster than bare (slurmd's 10 ms per script)
    faster_ok: bool = False
    #: outside-directory files: name -> (shell body, mode); targets of links
    outside: dict = field(default_factory=dict)
    #: why the case exists (the issue's wording), for the docs and failures
    why: str = ""
    #: hookscope only: callable(records) -> list of problems in the journal
    journal: object = None


@dataclass
class Obs:
    node_state: str = ""
    node_reason: str = ""
    job_state: str = ""
    job_reason: str = ""
    job_exit: str = ""
    ran: list = field(default_factory=list)
    probes: dict = field(default_factory=dict)  # tag -> (state text, env bytes)
    status: str = ""  # slurmd's view of the hook's status, "A:B"
    duration_s: float | None = None
    log: str = ""  # slurmd's log for this job (for failure messages)
    journal_problems: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)  # harness seconds per step (to keep the tier fast)

    def outcome(self) -> dict:
        return {"node": (self.node_state, self.node_reason),
                "job": (self.job_state, self.job_reason, self.job_exit),
                "ran": self.ran, "slurmd status": self.status}


# ------------------------------------------------------------------ building
def _fs(name) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


def build(case: Case, base: Path, marker: Path, probe_dir: Path) -> None:
    """Create ``base/prolog`` and ``base/epilog`` for ``case`` (the other hook
    gets one silent no-op script) and the outside directory."""
    for h in HOOKS:
        d = base / h
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        os.chmod(d, 0o755)
    out = base / "outside"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    os.chmod(out, 0o755)
    subst = {"{M}": str(marker), "{O}": str(out), "{B}": str(base)}

    def fill(text):
        for k, v in subst.items():
            text = text.replace(k, v)
        return text

    for name, (body, mode) in case.outside.items():
        p = out / name
        p.write_text(f"#!/bin/sh\necho {name} >> {marker}\n" + fill(body))
        os.chmod(p, mode)
    other = base / ("epilog" if case.hook == "prolog" else "prolog")
    (other / "50-noop").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(other / "50-noop", 0o755)
    d = os.fsencode(base / case.hook)
    for e in case.entries:
        path = os.path.join(d, _fs(e.name))
        tag = e.tag or (e.name if isinstance(e.name, str) else e.name.decode(errors="replace"))
        if e.kind == "dir":
            os.mkdir(path)
            os.chmod(path, e.mode)
            continue
        if e.kind == "link":
            os.symlink(fill(e.target), path)
            continue
        if e.kind in ("sh", "bash"):
            shell = "/bin/sh" if e.kind == "sh" else "/bin/bash"
            data = f"#!{shell}\necho '{tag}' >> {marker}\n{fill(e.body)}".encode()
        elif e.kind == "probe":
            data = PROBE_SOURCE.read_bytes().replace(b"__OUT__", os.fsencode(probe_dir / tag))
        else:
            data = e.data
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, e.mode)
        if e.owner is not None:
            os.chown(path, e.owner, -1)


# ------------------------------------------------------------------ observing
_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})\] (.*)$")


def _lines(log: str):
    for line in log.splitlines():
        m = _TS.match(line)
        if m:
            yield datetime.fromisoformat(m.group(1)).timestamp(), m.group(2)


def hook_window(log: str, job: int, hook: str):
    """(start, end) of the job's ``hook`` in slurmd's own log (debug2 lines),
    or None.  Prolog: from "Processing RPC: REQUEST_LAUNCH_PROLOG" to its
    "Finish processing"; epilog: from the job's "_rpc_terminate_job" to
    "completed epilog for jobid N" (or "epilog failed")."""
    start = end = None
    for t, msg in _lines(log):
        if hook == "prolog":
            if start is None and msg.endswith("Processing RPC: REQUEST_LAUNCH_PROLOG") and "Start" not in msg:
                start = t
            elif start is not None and msg.endswith("Finish processing RPC: REQUEST_LAUNCH_PROLOG"):
                return start, t
        else:
            if start is None and f"_rpc_terminate_job: uid = 0 JobId={job}" in msg:
                start = t
            elif start is not None and (f"completed epilog for jobid {job}" in msg
                                        or f"[job {job}] epilog failed" in msg):
                end = t
                return start, end
    return None


#: slurmd's status for a glob that matched nothing (see slurmd_status).
EMPTY_GLOB = "empty glob"


def slurmd_status(log: str, job: int, hook: str) -> str:
    """slurmd's view of the hook's status: ``A:B`` from "[job N] <hook> failed
    status=A:B", where "didn't run: status:N" (an exec failure) counts as N:0;
    "0:0" when it logged no failure; ``EMPTY_GLOB`` when the glob matched
    nothing (slurmd then logs 0:0 for a failure, which no command can return)."""
    if "Unable to create list of paths" in log:
        return EMPTY_GLOB
    didnt = re.search(rf"{hook} didn't run: status:(\d+)", log)
    m = re.search(rf"\[job {job}\] {hook} failed status=(\d+):(\d+)", log)
    if didnt and (not m or m.group(0).endswith("status=0:0")):
        return f"{didnt.group(1)}:0"
    return f"{m.group(1)}:{m.group(2)}" if m else "0:0"


def read_probes(probe_dir: Path, job: int) -> dict:
    out = {}
    for p in sorted(probe_dir.glob("*.state")):
        tag = p.name[:-len(".state")]
        env = (probe_dir / f"{tag}.env")
        raw = env.read_bytes() if env.exists() else b""
        out[tag] = (p.read_text(errors="replace"), normalize_env(raw, job))
    return out


#: Variables whose value is the job ID (it differs between the two runs).
JOB_ID_VARS = (b"SLURM_JOB_ID", b"SLURM_JOBID")


def normalize_env(raw: bytes, job: int) -> bytes:
    """The job ID differs between runs: ``SLURM_JOB_ID=<job>`` becomes ``=<JOB>``."""
    for name in JOB_ID_VARS:
        raw = re.sub(rb"(?:(?<=\0)|^)" + name + rb"=" + str(job).encode() + rb"(?=\0|$)", name + b"=<JOB>", raw)
    return raw


def leftovers(job: int) -> list[int]:
    """PIDs of processes started by this job's prolog/epilog that still exist."""
    want = f"SLURM_JOB_ID={job}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if want in env and any(e.startswith(b"SLURM_SCRIPT_CONTEXT=") and e.endswith((b"prolog_slurmd", b"epilog_slurmd"))
                               for e in env):
            pids.append(int(d))
    return pids


def kill_leftovers(job: int) -> None:
    for pid in leftovers(job):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ------------------------------------------------------------------ running
class Runner:
    """Runs cases in one mode on a cluster whose slurm.conf names ``base``."""

    def __init__(self, cluster, base: Path, mode: str):
        self.c, self.base, self.mode = cluster, base, mode
        self.marker = base / "ran"
        self.probe_dir = base / "probe"
        self.journal_dir = base / "journal"

    def run(self, case: Case, settle_timeout: float = 90) -> Obs:
        c = self.c
        self.marker.write_text("")
        os.chmod(self.marker, 0o666)
        shutil.rmtree(self.probe_dir, ignore_errors=True)
        self.probe_dir.mkdir()
        shutil.rmtree(self.journal_dir, ignore_errors=True)
        build(case, self.base, self.marker, self.probe_dir)
        mark = c.log_size("slurmd")
        t = [time.monotonic()]
        job = c.sbatch(JOB, name="fidelity")
        try:
            info = c.wait_job_settled(job, timeout=settle_timeout)
            t.append(time.monotonic())
            # the epilog has run (also after a failed prolog) and the node is settled
            c._wait(lambda: re.search(rf"completed epilog for jobid {job}\b|\[job {job}\] epilog failed",
                                      c.log_since("slurmd", mark)),
                    settle_timeout, f"job {job}'s epilog to finish", ("slurmd",))
            c.wait_node({"IDLE"}, settle_timeout, allow_drain=True)
            t.append(time.monotonic())
            if case.linger:
                time.sleep(case.linger)
            info = c.job(job) or info
            node = c.node_info()
            log = c.log_since("slurmd", mark)
            final = info.get("JobState") in FINAL_STATES
            obs = Obs(node_state=node.get("State", ""), node_reason=node.get("Reason", ""),
                      job_state=info.get("JobState", ""), job_reason=info.get("Reason", ""),
                      # a held job's ExitCode depends on whether the batch launch
                      # request had arrived when the prolog failed: a race, not an outcome
                      job_exit=info.get("ExitCode", "") if final else "",
                      ran=[line for line in self.marker.read_text(errors="replace").splitlines() if line],
                      probes=read_probes(self.probe_dir, job),
                      status=slurmd_status(log, job, case.hook), log=_job_log(log))
            w = hook_window(log, job, case.hook)
            obs.duration_s = None if w is None else round(w[1] - w[0], 3)
            if self.mode in ("hookscope", "dispatch-exec"):
                recs = _records(self.journal_dir)
                obs.journal_problems = journal_agrees(recs, job, case.hook, obs.status)
                if case.journal is not None:
                    obs.journal_problems += list(case.journal(recs))
            t.append(time.monotonic())
            return obs
        finally:
            kill_leftovers(job)
            c.cancel_all()
            c.resume()
            t.append(time.monotonic())
            if "obs" in locals():
                obs.phases = dict(zip(("settle", "epilog", "observe", "reset"),
                                      (round(b - a, 2) for a, b in zip(t, t[1:]))))


def _job_log(log: str) -> str:
    keep = [line for line in log.splitlines()
            if re.search(r"prolog|epilog|run_command|Launching batch", line, re.I) and "debug" not in line]
    return "\n".join(keep[-20:])


def journal_agrees(recs: list, job: int, hook: str, status: str) -> list:
    """Problems with the hookscope run's journal: there must be a hook run for
    this job and context (the proof the run went through hookscope-hook),
    finished, and it must tell what slurmd saw (``status``, "A:B"): a signal
    B ended the last script run, or exit status A did."""
    from emitter import contract as C

    ids = {r.get(C.R_HOOK_ID) for r in recs
           if r.get(C.R_KIND) == C.K_HOOK_STARTED and r.get(C.R_CONTEXT) == CONTEXT[hook]
           and str((r.get(C.R_JOB) or {}).get("job_id")) == str(job)}
    if not ids:
        return [f"no hook_started record for job {job} {CONTEXT[hook]} in the journal"]
    mine = [r for r in recs if r.get(C.R_HOOK_ID) in ids]
    ended = [r for r in mine if r.get(C.R_KIND) == C.K_HOOK_ENDED]
    if not ended:
        return ["the hook run has no hook_ended record"]
    if ":" not in status:
        return []  # the empty glob: no script ran
    a, b = (int(x) for x in status.split(":"))
    scripts = [r for r in mine if r.get(C.R_KIND) == C.K_SCRIPT_ENDED]
    last = scripts[-1] if scripts else {}
    if b:
        if last.get(C.R_SIGNAL) != b:
            return [f"slurmd saw signal {b}; the last script_ended says signal={last.get(C.R_SIGNAL)!r} "
                    f"exit={last.get(C.R_EXIT)!r} timed_out={last.get(C.R_TIMED_OUT)!r}"]
    elif ended[-1].get(C.R_STATUS) != a:
        return [f"slurmd saw status {a}; hook_ended says {ended[-1].get(C.R_STATUS)!r}"]
    return []


def _records(journal_dir: Path) -> list:
    import json

    from emitter import contract

    recs = []
    if journal_dir.is_dir():
        for p in sorted(journal_dir.glob("*" + contract.JOURNAL_SUFFIX)):
            for line in p.read_text(errors="replace").splitlines():
                if line.strip():
                    try:
                        recs.append(json.loads(line))
                    except ValueError:
                        pass
    return recs


# ------------------------------------------------------------------ comparing
def env_diff(a: bytes, b: bytes) -> str:
    """A readable difference between two raw environ blocks (bare, hookscope)."""
    def items(raw):
        return [x for x in raw.split(b"\0") if x]
    ia, ib = items(a), items(b)
    da = dict(x.split(b"=", 1) if b"=" in x else (x, b"") for x in ia)
    db = dict(x.split(b"=", 1) if b"=" in x else (x, b"") for x in ib)
    out = []
    for k in db.keys() - da.keys():
        out.append(f"added {k.decode(errors='replace')}={db[k].decode(errors='replace')!r}")
    for k in da.keys() - db.keys():
        out.append(f"removed {k.decode(errors='replace')}")
    for k in da.keys() & db.keys():
        if da[k] != db[k]:
            out.append(f"changed {k.decode(errors='replace')}: {da[k]!r} -> {db[k]!r}")
    if not out and ia != ib:
        out.append("same variables, different order or duplicates")
    return "; ".join(sorted(out))


def text_diff(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    sa, sb = set(la), set(lb)
    return "; ".join([f"bare only: {x!r}" for x in la if x not in sb]
                     + [f"hookscope only: {x!r}" for x in lb if x not in sa]) or "order differs"


def compare(case: Case, bare: Obs, hs: Obs) -> list[str]:
    """Every way the hookscope run differs from the bare run."""
    diffs = []
    if bare.probes.keys() != hs.probes.keys():
        diffs.append(f"probes that ran: bare {sorted(bare.probes)}, hookscope {sorted(hs.probes)}")
    for k, v in bare.outcome().items():
        if k == "slurmd status" and v == EMPTY_GLOB and hs.status != "0:0":
            continue  # any failure status is the closest a command can come
        if hs.outcome()[k] != v:
            diffs.append(f"{k}: bare {v!r}, hookscope {hs.outcome()[k]!r}")
    for tag in sorted(bare.probes.keys() | hs.probes.keys()):
        if tag not in bare.probes or tag not in hs.probes:
            continue  # whether it ran is the "ran" comparison
        (sa, ea), (sb, eb) = bare.probes[tag], hs.probes[tag]
        if ea != eb:
            diffs.append(f"probe {tag} environment: {env_diff(ea, eb)}")
        if sa != sb:
            diffs.append(f"probe {tag} process state: {text_diff(sa, sb)}")
    if bare.duration_s is None or hs.duration_s is None:
        diffs.append(f"duration not found in slurmd's log (bare {bare.duration_s}, hookscope {hs.duration_s})")
    else:
        tol = max(TOL_ABS_S, TOL_REL * bare.duration_s)
        delta = hs.duration_s - bare.duration_s
        if delta > tol or (delta < -tol and not case.faster_ok):
            diffs.append(f"duration: bare {bare.duration_s:.3f} s, hookscope {hs.duration_s:.3f} s "
                         f"(tolerance {tol:.2f} s)")
    diffs += [f"journal: {p}" for p in hs.journal_problems]
    return diffs
