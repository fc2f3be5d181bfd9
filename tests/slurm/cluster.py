"""A real single-node Slurm cluster (Debian's 22.05) for the integration tier.

Everything lives in one temp directory: munged (as user ``munge``, with its own
key, socket, pid, log and seed files), slurmctld and slurmd in foreground mode
(``-D``) with their spool, state, pid and log files, and the slurm.conf that
client commands find through ``SLURM_CONF``.  Nothing under /etc/slurm or
/etc/munge is touched, so a developer's own cluster keeps running.

Between scenarios the hook lines are rewritten and ``scontrol reconfigure``
run (0.03 s; a restart costs seconds, see docs/slurm-tier.md).

Usage::

    c = SlurmCluster(tmpdir)
    c.start()                     # munged, slurmctld, slurmd; waits for idle
    c.set_hooks(Prolog="/x/*")    # rewrite slurm.conf + reconfigure
    job = c.sbatch("#!/bin/sh\\necho hi\\n")
    c.wait_job(job, {"COMPLETED"})
    c.stop()
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = "/usr/sbin"
#: The slurm.conf hook parameters this cluster can set.
HOOK_PARAMS = ("Prolog", "Epilog", "PrologSlurmctld", "EpilogSlurmctld",
               "TaskProlog", "TaskEpilog", "SrunProlog", "SrunEpilog")
CTLD_HOOKS = ("PrologSlurmctld", "EpilogSlurmctld")

#: Job states after which a job will not change without outside help.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY", "PREEMPTED",
})


class SlurmClusterError(RuntimeError):
    """The cluster could not be started or did not reach the expected state.

    The message carries the tail of the daemon logs, which is where the
    reason is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(path: str) -> str:
    return path if os.path.exists(path) else shutil.which(os.path.basename(path)) or path


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: unreadable)"
    return "\n".join(lines[-n:])


class SlurmCluster:
    """munged + slurmctld + slurmd, one node called after this host."""

    def __init__(self, root: str | os.PathLike, *, node: str | None = None,
                 cpus: int = 2, prolog_epilog_timeout: int = 20,
                 cluster_name: str = "hookscope", hostname: str | None = None):
        self.root = Path(root)
        #: The Slurm NodeName (``slurmd -N``); may differ from the host name,
        #: as with NodeHostname=, ``slurmd -N`` or pods.
        self.node = node or socket.gethostname().split(".")[0]
        #: slurmctld's host and the node's NodeHostname (default: the node name).
        self.hostname = hostname or self.node
        self.cpus = cpus
        self.prolog_epilog_timeout = prolog_epilog_timeout
        self.cluster_name = cluster_name
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.log_dir = self.root / "log"
        self.jobs_dir = self.root / "jobs"  # job scripts and their output
        self.noop_script = self.root / "etc" / "noop-hook"
        self.ctld_port = 0
        self.slurmd_port = 0
        self.hooks: dict[str, str] = {}
        #: SlurmdDebug; the fidelity tier raises it to debug2 for its timings.
        self.slurmd_debug = "info"
        #: Start slurmd with SIGPIPE ignored, as systemd does (IgnoreSIGPIPE=yes
        #: is its default) and so as a production slurmd runs.
        self.slurmd_ignore_sigpipe = False
        #: PrologFlags; None leaves the line out (slurmd then runs the Prolog
        #: at a job's first step on the node, not at allocation).
        self.prolog_flags = "Alloc"
        #: Longest pause between two polls of a wait (the fidelity tier, which
        #: runs ~120 short jobs, polls faster).
        self.poll_max_s = 0.25
        #: SlurmUser: slurmctld (and PrologSlurmctld/EpilogSlurmctld) run as
        #: this user; start() gives it the state, log and pid directories.
        self.slurm_user = "root"
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs = []

    # ------------------------------------------------------------ set-up
    @property
    def env(self) -> dict:
        """Environment for client commands (sbatch, scontrol, sinfo ...)."""
        e = dict(os.environ)
        e["SLURM_CONF"] = str(self.conf_path)
        # A job's environment (and so TaskProlog's) is the submitter's: keep
        # the test run's own Slurm and hookscope settings out of it.
        for k in [k for k in e if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "HOOKSCOPE_"))]:
            if k != "SLURM_CONF":
                del e[k]
        return e

    def conf_text(self) -> str:
        r = self.root
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            f"SlurmUser={self.slurm_user}",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "SlurmctldDebug=info",
            f"SlurmdDebug={self.slurmd_debug}",
            f"PlugStackConfig={r / 'etc' / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "SwitchType=switch/none",
            *([f"PrologFlags={self.prolog_flags}"] if self.prolog_flags else []),
            f"PrologEpilogTimeout={self.prolog_epilog_timeout}",
            # A prolog failure drains the node; tests resume it themselves.
            # ReturnToService=2 only brings back DOWN nodes, never a DRAIN.
            "ReturnToService=2",
            # Fast turnaround: schedule on every event, kill quickly, keep
            # finished jobs visible long enough for scontrol show job.
            "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,default_queue_depth=10",
            "KillWait=2",
            "MinJobAge=600",
            "MessageTimeout=10",
            "SlurmdTimeout=120",
            "InactiveLimit=0",
            "BatchStartTimeout=30",
            "JobRequeue=1",
        ]
        hooks = dict(self.hooks)
        # slurmctld decides at start-up whether PrologSlurmctld/EpilogSlurmctld
        # exist; a reconfigure only changes their path.  Keep them always set
        # (a no-op by default) so any scenario can switch them by reconfigure.
        for k in CTLD_HOOKS:
            hooks.setdefault(k, str(self.noop_script))
        lines += [f"{k}={v}" for k, v in sorted(hooks.items())]
        lines += [
            f"NodeName={self.node} NodeAddr=127.0.0.1 NodeHostname={self.hostname} "
            f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=10 State=UP",
        ]
        return "\n".join(lines) + "\n"

    def write_conf(self) -> None:
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text(self.conf_text())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.conf_path)

    def _start_munged(self) -> None:
        munge = pwd.getpwnam("munge")
        # munged refuses a key, socket dir, log or seed that others could write.
        self.munge_dir.mkdir(mode=0o755)
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        key = self.munge_dir / "munge.key"
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        cmd = [_daemon(f"{SBIN}/munged"), "-F", "--force",
               f"--socket={self.munge_socket}", f"--key-file={key}",
               f"--pid-file={self.munge_dir / 'munged.pid'}",
               f"--log-file={self.munge_dir / 'munged.log'}",
               f"--seed-file={self.munge_dir / 'munged.seed'}"]
        # as munge:munge with no supplementary groups (root's are dropped)
        self._spawn("munged", cmd, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.munge_socket.exists():
                probe = subprocess.run(
                    f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
                    shell=True, capture_output=True, timeout=10)
                if probe.returncode == 0:
                    return
            self._check_alive("munged")
            time.sleep(0.05)
        raise SlurmClusterError("munged did not answer within 15 s\n" + self.logs())

    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        out = open(self.log_dir / f"{name}.out", "ab")
        self._logs.append(out)
        self._procs[name] = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=self.env, cwd=self.root, **kw)

    def _start_slurmd(self) -> None:
        kw = {}
        if self.slurmd_ignore_sigpipe:
            # after Popen's restore_signals: the daemon starts with SIGPIPE ignored
            kw["preexec_fn"] = lambda: signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self._spawn("slurmd", [_daemon(f"{SBIN}/slurmd"), "-D", "-N", self.node, "-f", str(self.conf_path)], **kw)

    def restart_slurmd(self, timeout: float = 60) -> None:
        """Stop slurmd and start it again from the current attributes.

        slurmd 22.05 reads PrologEpilogTimeout (and its own signal state) only
        at start; a reconfigure leaves the old value (measured).  About 0.05 s
        until the node is idle again."""
        self.write_conf()
        p = self._procs.pop("slurmd", None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self._start_slurmd()
        self.wait_node({"IDLE"}, timeout, allow_drain=True)

    def _check_alive(self, name: str) -> None:
        p = self._procs.get(name)
        if p is not None and p.poll() is not None:
            raise SlurmClusterError(f"{name} exited with status {p.returncode}\n" + self.logs())

    def start(self, hooks: dict | None = None, timeout: float = 60) -> "SlurmCluster":
        if os.geteuid() != 0:
            raise SlurmClusterError("the Slurm tier needs root")
        self.hooks = {k: str(v) for k, v in (hooks or {}).items() if v}
        for d in ("etc", "state", "spool", "run", "log", "jobs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.jobs_dir, 0o1777)
        if self.slurm_user != "root":
            # slurmctld drops to SlurmUser before it writes its state, log and pid.
            su = pwd.getpwnam(self.slurm_user)
            for d in ("state", "log", "run"):
                os.chown(self.root / d, su.pw_uid, su.pw_gid)
        (self.root / "etc" / "plugstack.conf").write_text("")
        # Who owns this cluster: reap_stale() cleans up after a killed test run.
        (self.root / "owner").write_text(f"{os.getpid()}\n")
        self.noop_script.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(self.noop_script, 0o755)
        self.ctld_port, self.slurmd_port = free_port(), free_port()
        self.write_conf()
        try:
            self._start_munged()
            self._spawn("slurmctld", [_daemon(f"{SBIN}/slurmctld"), "-D", "-i", "-f", str(self.conf_path)])
            self._wait(lambda: self.scontrol("ping", check=False).returncode == 0,
                       timeout, "slurmctld to answer 'scontrol ping'", ("slurmctld",))
            self._start_slurmd()
            self.wait_node({"IDLE"}, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every daemon this object started (by PID), then close logs."""
        for name in ("slurmd", "slurmctld", "munged"):
            p = self._procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        # slurmstepd processes outlive slurmd; they belong to this test run.
        for pid, cmd in _processes():
            if cmd.startswith("slurmstepd:") and self._stepd_is_ours(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for f in self._logs:
            f.close()
        self._logs.clear()

    def _stepd_is_ours(self, pid: int) -> bool:
        return _cwd_under(pid, str(self.root))

    # ------------------------------------------------------------ config
    def set_hooks(self, timeout: float = 30, **hooks: str) -> None:
        """Replace the hook lines (Prolog=..., Epilog=...) and reconfigure."""
        unknown = set(hooks) - set(HOOK_PARAMS)
        if unknown:
            raise ValueError(f"not a hook parameter: {sorted(unknown)}")
        self.hooks = {k: str(v) for k, v in hooks.items() if v}
        self.write_conf()
        self.reconfigure(timeout)

    def reconfigure(self, timeout: float = 30) -> None:
        """``scontrol reconfigure``, then wait until both daemons took it:
        slurmctld's ``show config`` has the new hook lines, slurmd has logged
        its reconfigure ("Node reconfigured ...") and the node is back."""
        mark = self.log_size("slurmd")
        self.scontrol("reconfigure")
        # slurmd 22.05 logs these two lines (at info) each time it re-reads slurm.conf
        self._wait(lambda: any(m in self.log_since("slurmd", mark) for m in (
                       "Node reconfigured", "CPU frequency setting not configured")),
                   timeout, "slurmd to reconfigure", ("slurmd", "slurmctld"))
        shown = parse_config(self.scontrol("show", "config").stdout)
        for k, v in self.hooks.items():
            if shown.get(k) != v:
                raise SlurmClusterError(f"after reconfigure slurmctld has {k}={shown.get(k)!r}, not {v!r}")
        self.wait_node({"IDLE"}, timeout, allow_drain=True)

    # ------------------------------------------------------------ commands
    def run(self, *cmd: str, check: bool = True, timeout: float = 30,
            user: str | None = None) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                           timeout=timeout, user=user, cwd=self.jobs_dir)
        if check and p.returncode != 0:
            raise SlurmClusterError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def scontrol(self, *args: str, check: bool = True, timeout: float = 30):
        return self.run("scontrol", *args, check=check, timeout=timeout)

    def sbatch(self, script: str, *args: str, name: str = "job", user: str | None = None) -> int:
        """Submit ``script`` (text); output goes to jobs/<name>-<jobid>.out."""
        path = self.jobs_dir / f"{name}.sh"
        path.write_text(script)
        os.chmod(path, 0o755)
        out = self.jobs_dir / f"{name}-%j.out"
        p = self.run("sbatch", "--parsable", f"--output={out}", f"--job-name={name}",
                     f"--chdir={self.jobs_dir}", *args, str(path), user=user)
        return int(p.stdout.strip().split(";")[0])

    def job_output(self, job_id: int, name: str = "job") -> str:
        p = self.jobs_dir / f"{name}-{job_id}.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def job(self, job_id: int) -> dict:
        """``scontrol show job -o`` as a dict (values up to the next key)."""
        p = self.scontrol("show", "job", "-o", str(job_id), check=False)
        if p.returncode != 0:
            return {}
        return parse_kv(p.stdout)

    def node_info(self) -> dict:
        """State (e.g. ``IDLE+DRAIN``) and Reason (without the [user@time] tail)."""
        info = parse_kv(self.scontrol("show", "node", "-o", self.node).stdout)
        info["Reason"] = re.sub(r"\s*\[[^\]]*\]\s*$", "", info.get("Reason", "") or "")
        return info

    def node_state(self) -> set[str]:
        return set(self.node_info().get("State", "").split("+"))

    def drain_reasons(self) -> list[str]:
        """``sinfo -R`` reasons for this node (what an SRE would look at)."""
        out = self.run("sinfo", "-R", "-h", "-o", "%E|%N").stdout
        return [line.split("|")[0].strip() for line in out.splitlines()
                if line.strip() and self.node in line.split("|")[-1]]

    def resume(self, timeout: float = 30) -> None:
        """Bring a drained node back and wait until it is IDLE."""
        st = self.node_state()
        if st & {"DRAIN", "DOWN", "FAIL"}:
            self.scontrol("update", f"nodename={self.node}", "state=resume")
        self.wait_node({"IDLE"}, timeout)

    def cancel_all(self, timeout: float = 30) -> None:
        self.run("scancel", "--full", "-w", self.node, check=False)
        self.run("scancel", "--state=PENDING", "--user=root", check=False)
        self._wait(lambda: not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip(),
                   timeout, "the queue to empty", ("slurmctld",))

    # ------------------------------------------------------------ waiting
    def wait_job(self, job_id: int, states, timeout: float = 60) -> dict:
        """Wait until the job's JobState is one of ``states``; return the job."""
        want = set(states)
        return self._until(lambda: self.job(job_id), lambda j: j.get("JobState") in want,
                           timeout, f"job {job_id} to reach {sorted(want)}")

    def wait_job_settled(self, job_id: int, timeout: float = 60) -> dict:
        """Wait until the job is final, or pending and held (what slurmctld
        does to a batch job whose prolog failed: requeue, hold); return it."""
        def settled(j):
            st, reason = j.get("JobState"), j.get("Reason", "")
            return st in FINAL_STATES or (st == "PENDING" and "held" in reason.lower())
        return self._until(lambda: self.job(job_id), settled, timeout,
                           f"job {job_id} to finish or be held")

    def wait_node(self, states, timeout: float = 60, allow_drain: bool = False) -> dict:
        """Wait until the node's base state is in ``states`` with no
        NOT_RESPONDING/COMPLETING flag (nor DRAIN unless ``allow_drain``)."""
        want = set(states)
        bad = {"NOT_RESPONDING", "COMPLETING", "POWERING_UP"} | (set() if allow_drain else {"DRAIN"})

        def ok(info):
            st = info.get("State", "").split("+")
            return st[0] in want and not (set(st[1:]) & bad)
        return self._until(self.node_info, ok, timeout, f"node {self.node} to be {sorted(want)}")

    def wait_drained(self, timeout: float = 60) -> dict:
        """Wait until the node carries the DRAIN flag; return node_info."""
        return self._until(self.node_info, lambda i: "DRAIN" in i.get("State", ""),
                           timeout, f"node {self.node} to drain")

    def _until(self, get, ok, timeout, what) -> dict:
        last = {}

        def pred():
            nonlocal last
            last = get()
            return ok(last)
        self._wait(pred, timeout, lambda: f"{what} (last: State/JobState="
                   f"{last.get('State') or last.get('JobState')} Reason={last.get('Reason')!r})",
                   ("slurmctld", "slurmd"))
        return last

    def _wait(self, pred, timeout, what, daemons=()) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            for d in daemons:
                self._check_alive(d)
            if pred():
                return
            if time.monotonic() > deadline:
                what = what() if callable(what) else what
                raise SlurmClusterError(f"timed out after {timeout:g} s waiting for {what}\n" + self.logs())
            time.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)

    # ------------------------------------------------------------ logs
    def log_size(self, name: str) -> int:
        try:
            return (self.log_dir / f"{name}.log").stat().st_size
        except OSError:
            return 0

    def log_since(self, name: str, offset: int) -> str:
        try:
            with open(self.log_dir / f"{name}.log", "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def logs(self, n: int = 25) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.out"):
            p = self.log_dir / name
            if p.exists():
                parts.append(f"--- {p} (last {n} lines)\n{_tail(p, n)}")
        mlog = self.munge_dir / "munged.log"
        if mlog.exists():
            parts.append(f"--- {mlog}\n{_tail(mlog, n)}")
        return "\n".join(parts)


def reap_stale(parent: str = "/tmp", prefix: str = "hookscope-slurm-") -> list[int]:
    """Kill the daemons of clusters whose test run died (kill -9, OOM) and
    remove their directories.

    Only a directory whose ``owner`` PID is gone is touched, and only a
    process whose command line names that directory is killed, by PID, so a
    concurrent test run and any real Slurm on the machine are left alone."""
    killed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return killed
    for name in names:
        root = os.path.join(parent, name)
        if not name.startswith(prefix) or not os.path.isdir(root):
            continue
        try:
            owner = int(Path(root, "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        if os.path.exists(f"/proc/{owner}"):
            continue
        for pid, cmd in _processes():
            # daemons name the directory; scripts and slurmstepd run in it
            ours = root + "/" in cmd + "/" or _cwd_under(pid, root)
            if ours and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except OSError:
                    pass
        shutil.rmtree(root, ignore_errors=True)
    return killed


def _cwd_under(pid: int, root: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return cwd == root or cwd.startswith(root.rstrip("/") + "/")


def parse_config(text: str) -> dict:
    """``scontrol show config`` (``Key   = value`` lines) as a dict."""
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_kv(text: str) -> dict:
    """Parse one ``scontrol show ... -o`` line; values may contain spaces
    (Reason=Prolog error [root@...]) so each runs up to the next ``Key=``."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    out = {}
    matches = list(_KEY.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out[m.group(1)] = text[m.end():end].strip()
    return out


def _processes():
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            yield int(d), cmd
