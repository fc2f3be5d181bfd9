"""The execution engine: run a planned hook the way the platform would, recorded.

The process layer (emitter/process.py) starts each script exactly as slurmd's
``run_command`` or Debian's ``run-parts`` would and ends it the same way;
this module plans the order, journals every script and decides the hook's
status.  docs/runner.md describes what a script inherits.

``script_started`` is journaled before the spawn, so a runner killed with -9
leaves a journal that names the script it was running.  SIGTERM/SIGINT to the
runner (slurmd's own timeout) is forwarded to the running script's group, the
journal says the runner was terminated, and no further script runs.
"""

import os
import time

import _signal

from emitter import contract as c
from emitter import layouts
from emitter import process as P
from emitter.pump import Pump, Tail, TaskParser
from emitter.journal import Journal, _sha256

_SIGTERM, _SIGINT = _signal.SIGTERM, _signal.SIGINT
#: records written at once: a script's start before its spawn, and the end of the hook
_WRITE_NOW = frozenset((c.K_SCRIPT_STARTED, c.K_HOOK_ENDED))
_READ = 65536


#: Other names Slurm (22.05, from its binaries) uses for the same job metadata,
#: tried after contract.JOB_ENV: slurmd's Prolog/Epilog get SLURM_NODELIST, and
#: Prolog/Epilog/PrologSlurmctld get SLURM_JOB_RESTART_COUNT, not SLURM_RESTART_COUNT.
_JOB_ENV_ALIASES = {"job_id": ("SLURM_JOBID",), "nodelist": ("SLURM_NODELIST",), "step_id": ("SLURM_STEPID",),
                    "restart_count": ("SLURM_JOB_RESTART_COUNT",), "uid": ("SLURM_UID",)}
#: slurmctld's hooks get "(null)" for unset strings (SLURM_JOB_ACCOUNT with no accounting).
_NULL = "(null)"


def job_metadata(env):
    """The hook_started ``job`` dict from Slurm's environment (str or None per contract key)."""
    out = {}
    for key, var in c.JOB_ENV.items():
        v = env.get(var)
        for alt in _JOB_ENV_ALIASES.get(key, ()):
            if v is None or v == _NULL:
                v = env.get(alt)
        out[key] = None if v is None or v == _NULL else v
    return out


class ScriptResult:
    __slots__ = ("exit_code", "signal", "timed_out", "duration_ns", "output", "truncated",
                 "exported", "unset", "exit_ns", "leftovers", "runner_signal")

    def __init__(self):
        self.exit_code = None
        self.signal = None
        self.timed_out = False
        self.duration_ns = 0
        self.output = b""
        self.truncated = False
        self.exported = []
        self.unset = []
        self.exit_ns = None  # when the script process itself exited (duration_ns: until EOF)
        self.leftovers = []
        self.runner_signal = None


def _write_all(fd, data):
    """Pass output through; a closed or broken stdout must not stop the hook."""
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
        return True
    except OSError:
        return False


decode_status = P.decode_status


def _bytes_env(env):
    return {os.fsencode(k): os.fsencode(v) for k, v in env.items()}


def _same_file(a, b):
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _style(settings, knobs):
    """How scripts are started: slurmd's run_command, run-parts, or as the
    runner itself was (``hookscope exec``: the dispatcher started the runner in
    the script's place)."""
    style = knobs.get("process")
    if style:
        return style
    return {"run-parts": P.RUN_PARTS, "exec": P.INHERIT}.get(settings["layout"], P.SLURM)


def _redactor(settings):
    from emitter.redact import BUDGET_S, Redactor

    return Redactor(settings["redact"], settings["redact_builtin"], settings.get("redact_budget_s") or BUDGET_S)


def _reads_to_eof(fd):
    """Is ``fd`` a pipe or socket, whose reader (slurmd) waits for EOF anyway?"""
    try:
        fmt = os.fstat(fd).st_mode & 0o170000
    except OSError:
        return False
    return fmt in (0o010000, 0o140000)  # S_IFIFO, S_IFSOCK


class Runner:
    """Runs one hook: the planned entries of one context, journaled."""

    def __init__(self, settings, context, dirs, knobs, strict, journal=None, env=None,
                 stdout_fd=1, stderr_fd=2):
        self.s = settings
        self.context = context
        self.dirs = list(dirs)
        self.knobs = knobs
        self.strict = strict
        org = P.origin()
        # The environment the script gets, byte for byte: what the runner was
        # started with (not os.environ: CPython coerces LC_CTYPE into it).
        self.child_env = dict(org.env) if env is None else _bytes_env(env)
        self._block = org.block if env is None else None
        if settings.get("add_safe_path") and b"PATH" not in self.child_env:
            self.child_env[b"PATH"] = os.fsencode(settings["safe_path"])
            self._block = None
        self.env = {os.fsdecode(k): os.fsdecode(v) for k, v in self.child_env.items()}
        self.stdout_fd, self.stderr_fd = stdout_fd, stderr_fd
        self.journal = journal
        self.task = context == "prolog_task"
        self.style = _style(settings, knobs)
        self.timeout_s = float(settings["timeout_s"] or 0)
        self.origin = org
        self.terminated = None  # signal number once the runner was told to stop
        #: the signal that killed the script whose status is the hook's (slurmd
        #: would log "killed by signal N" for the bare script), else None
        self.status_signal = None
        self._child = None
        self._redactor = None
        self._log = None
        self._tail = self._parser = None
        self._pump = Pump(self._sink, lambda: self.terminated is not None)
        self._pending = []  # records waiting for the next script_started/hook_ended (_j)
        self._batch = settings.get("journal_batch", True)
        self._split = None  # separate stdout/stderr pipes (execute)

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        # slurmd's own timeout: SIGTERM to the runner's group.  A script in a
        # group of its own (slurmd style) gets it from us; the wait loop sends
        # SIGKILL 5 ms later (slurmd's follows 10 ms after its SIGTERM).
        self.terminated = signum
        if self._child is not None and self.style == P.SLURM:
            P.killpg(self._child.pgid, _SIGTERM)

    # ---------------------------------------------------------------- one script
    def _sink(self, is_out, data, current):
        if current:
            self._tail.add(data)
            if self._parser is not None and is_out:
                self._parser.feed(data)
        if self.s["passthrough"] or (self.task and is_out):
            # TaskProlog stdout always reaches slurmstepd: it is the protocol.
            _write_all(self.stdout_fd if is_out else self.stderr_fd, data)

    def execute(self, entry, result):
        """Start and wait for one script (entry.argv, else no arguments, as slurmd)."""
        argv = entry.argv if getattr(entry, "argv", None) else [entry.path]
        if self._split is None:  # the runner's fds 1 and 2 stay what they are for the whole hook
            self._split = self.task or (self.style != P.SLURM and not _same_file(self.stdout_fd, self.stderr_fd))
        split = self._split
        try:
            ch = P.spawn(entry.path, argv, self._launch, split)
        except OSError as exc:
            return self._exec_failed(entry, result, exc)
        self._tail = Tail(self.s["output_bytes"])
        self._parser = TaskParser() if self.task else None
        self._child = ch
        try:
            if self.terminated is not None:  # the signal arrived between scripts
                self._on_signal(self.terminated, None)
            deadline = ch.t0 + self.timeout_s if self.timeout_s else None
            if self.style == P.SLURM:
                self._pump.wait_slurm(ch, deadline)
            else:
                self._pump.wait_run_parts(ch, deadline)
        finally:
            self._child = None
            ch.close()
        self._result(ch, result)

    def _result(self, ch, result):
        now = time.monotonic()
        result.duration_ns = int(((ch.eof_at or now) - ch.t0) * 1e9)
        if ch.exit_at is not None:
            result.exit_ns = int((ch.exit_at - ch.t0) * 1e9)
        result.timed_out = ch.timed_out
        if ch.status is not None:
            result.exit_code, result.signal = decode_status(ch.status)
        if self.terminated is not None:
            result.runner_signal = self.terminated
        if ch.leftovers:  # command lines can hold secrets (mysql -pSECRET &): redacted like output
            if self._redactor is None:
                self._redactor = _redactor(self.s)
            result.leftovers = [{c.LO_PID: lo.pid, c.LO_CMD: self._redactor(lo.cmd), c.LO_HELD_NS: lo.held_ns,
                                 c.LO_FATE: lo.fate} for lo in ch.leftovers]
        result.output = self._tail.value()
        result.truncated = self._tail.truncated
        if self._parser is not None:
            self._parser.feed(b"", final=True)
            result.exported, result.unset = self._parser.exported, self._parser.unset

    def _exec_failed(self, entry, result, exc):
        from emitter.runfail import exec_failed

        result.exit_code, result.output = exec_failed(self.knobs, entry.path, exc)
        if self.s["passthrough"] or self.knobs.get("report_exit"):
            _write_all(self.stderr_fd, result.output)

    # ---------------------------------------------------------------- records
    def _stat_fields(self, entry, index):
        f = {c.R_INDEX: index, c.R_PATH: entry.path, c.R_SHA256: None, c.R_SIZE: None,
             c.R_MODE: None, c.R_UID: None, c.R_MTIME: None}
        if getattr(entry, "findings", None):  # this script's own permission findings (strict "auto")
            f[c.R_FINDINGS] = list(entry.findings)
        st = entry.st
        if st is not None:
            f[c.R_SIZE], f[c.R_MODE], f[c.R_UID], f[c.R_MTIME] = st.st_size, st.st_mode, st.st_uid, st.st_mtime_ns
        if entry.action in (layouts.RUN, layouts.REFUSE) and st is not None and st.st_size < 64 * 1024 * 1024:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                try:
                    h = _sha256()
                    while True:
                        b = os.read(fd, 1 << 20)
                        if not b:
                            break
                        h.update(b)
                    f[c.R_SHA256] = h.hexdigest()
                finally:
                    os.close(fd)
            except OSError:
                pass
        return f

    def _output_for_record(self, result, failed):
        mode = self.s["output_on"]
        if mode == "never" or (mode == "failure" and not failed) or not result.output:
            return None
        if self._redactor is None:
            self._redactor = _redactor(self.s)
        return self._redactor(result.output.decode("utf-8", "replace"))

    def _j(self, kind, fields):
        """Journal a record.  script_started and hook_ended are written at once
        (script_started before the spawn: crash evidence); the others wait for
        the next of those and go out with it in one locked write, which halves
        the journal's cost per script (``journal_batch``; docs/runner.md "Speed")."""
        if self.journal is not None:
            self._pending.append((kind, fields, time.time_ns()))
            if kind in _WRITE_NOW or not self._batch:
                self._flush()

    def _flush(self):
        # The journal never raises OSError; this also contains a bug of ours,
        # so recording can fail but running the scripts cannot.
        items, self._pending = self._pending, []
        if self.journal is None or not items:
            return
        try:
            many = getattr(self.journal, "append_many", None)
            if many is not None:
                many(items)
            else:
                for kind, fields, _ in items:
                    self.journal.append(kind, fields)
        except Exception as exc:  # noqa: BLE001
            _write_all(self.stderr_fd, f"hookscope: journal disabled for this hook after an internal "
                                       f"error ({type(exc).__name__}: {exc}); scripts still run\n".encode())
            self.journal = None

    # ---------------------------------------------------------------- the hook
    def _empty(self, warnings):
        from emitter.runfail import empty

        status, text = empty(self.knobs, self.s["layout"], self.s["empty_ok"], self.dirs, warnings)
        if text:
            _write_all(self.stderr_fd, text.encode())
        return status

    def _setup(self):
        """The process state scripts inherit, put back as the runner was started
        with it; returns what to undo at the end."""
        org = self.origin
        P.restore_ignored(org)
        # run-parts: umask(022) before anything
        self._launch = P.Launch(org, self.style, self.child_env, self.knobs.get("umask"), self._block)
        undo = []
        try:
            # An inherited SIGCHLD=SIG_IGN would auto-reap our scripts and hide
            # their status from waitpid.
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            for sig in (_SIGTERM, _SIGINT):
                if sig not in org.ignored:  # ignored as slurmd started us: it stays so
                    undo.append((sig, _signal.signal(sig, self._on_signal)))
        except ValueError:  # not the main thread (library use): no forwarding
            pass
        return undo

    def run(self, entries, warnings=()):
        """Run ``entries`` (from layouts.plan); returns the exit status for the platform."""
        t0 = time.monotonic()
        warnings = list(warnings)
        counted = layouts.counted(entries)
        empty_status = None if counted else self._empty(warnings)
        self._j(c.K_HOOK_STARTED, {
            c.R_CONTEXT: self.context, c.R_LAYOUT: self.s["layout"], c.R_DIRS: self.dirs,
            c.R_TIMEOUT_S: self.s["timeout_s"],
            c.R_JOB: job_metadata(self.env),
            c.R_WARNINGS: list(warnings),
        })
        undo = self._setup()
        status, failed_index, n = 0, None, 0
        try:
            if not counted:
                status = empty_status
                for e in entries:
                    self._skipped(e)
            else:
                status, failed_index, n = self._run_entries(entries)
            if self.terminated is not None:
                if status == 0:
                    status = 128 + self.terminated
                warnings.append(f"runner terminated by signal {self.terminated} (slurmd's own timeout, or "
                                "another SIGTERM/SIGINT to the runner): the running script's group was sent "
                                "SIGTERM and SIGKILL, and the remaining scripts did not run")
            if self._pump.background:  # leftover daemons may hold the hook: what is known goes out first
                self._flush()
            self._pump.finish(wait=self.terminated is None and _reads_to_eof(self.stdout_fd))
        finally:
            for sig, old in undo:
                _signal.signal(sig, old)
            self._j(c.K_HOOK_ENDED, {c.R_STATUS: status, c.R_N_SCRIPTS: n, c.R_FAILED_INDEX: failed_index,
                                     c.R_DURATION_NS: int((time.monotonic() - t0) * 1e9),
                                     c.R_WARNINGS: warnings, c.R_RUNNER_SIGNAL: self.terminated})
            if self._log is not None:
                self._log.close()
        return status

    def _run_entries(self, entries):
        status, failed_index, n, index = 0, None, 0, 0
        for e in entries:
            if e.action == layouts.SKIP:
                self._skipped(e)
                continue
            if self.terminated is not None:
                break
            code, sig = self._one(e, index)
            n += 1
            if self.terminated is not None:
                break  # killed by our forwarding of slurmd's signal: not the script's own failure
            if code and failed_index is None:
                failed_index = index
                status = code if self.knobs["failure_status"] == "script" else 1
                if self.knobs["failure_status"] == "script":
                    self.status_signal = sig
            index += 1
            if code and self.knobs["stop_on_failure"]:
                break
        return status, failed_index, n

    def _skipped(self, e):
        self._j(c.K_SCRIPT_SKIPPED, {c.R_INDEX: None, c.R_PATH: e.path, c.R_REASON: e.reason})
        if e.warn:
            self._tw_log(f"WARNING skipped {e.path}: {e.reason}")
            if self.knobs.get("report_exit"):
                _write_all(self.stderr_fd, f"run-parts: {e.reason.split(' (run-parts')[0]}\n".encode())

    def _one(self, entry, index):
        self._j(c.K_SCRIPT_STARTED, self._stat_fields(entry, index))
        r = ScriptResult()
        refused = None
        t0 = time.monotonic()
        if entry.action == layouts.RUN:
            self.execute(entry, r)
            r.duration_ns = r.duration_ns or int((time.monotonic() - t0) * 1e9)
        else:  # FAIL (not executable, a dangling link) or REFUSE (strict permissions)
            from emitter.runfail import not_run

            r.exit_code, r.output, refused = not_run(self.knobs, entry)
            if entry.action == layouts.REFUSE or self.s["passthrough"] or self.knobs.get("report_exit"):
                _write_all(self.stderr_fd, r.output)
        if entry.action == layouts.RUN and r.exit_code and self.knobs.get("report_exit"):
            from emitter.runfail import run_parts_line

            _write_all(self.stderr_fd, run_parts_line(entry.path, r.exit_code, r.signal).encode())
        self._ended(entry, index, r, refused)
        return r.exit_code, r.signal

    def _ended(self, entry, index, r, refused):
        failed = r.exit_code != 0
        fields = {c.R_INDEX: index, c.R_PATH: entry.path, c.R_EXIT: r.exit_code, c.R_SIGNAL: r.signal,
                  c.R_TIMED_OUT: r.timed_out, c.R_REFUSED: refused, c.R_DURATION_NS: r.duration_ns,
                  c.R_OUTPUT: self._output_for_record(r, failed), c.R_OUTPUT_TRUNCATED: r.truncated,
                  c.R_EXIT_NS: r.exit_ns, c.R_LEFTOVERS: r.leftovers, c.R_RUNNER_SIGNAL: r.runner_signal}
        if self.task:
            fields[c.R_EXPORTED] = r.exported
            fields[c.R_UNSET] = r.unset
        self._j(c.K_SCRIPT_ENDED, fields)
        if self.s["layout"] == "tensorwave" or self.s["log_file"]:
            self._tw_log(f"path={entry.path} exit={r.exit_code}" + (" timed_out" if r.timed_out else ""),
                         r.output if failed else None)

    # ---------------------------------------------------------------- per-node log (tensorwave)
    def _tw_log(self, text, output=None):
        if self.s["layout"] != "tensorwave" and not self.s["log_file"]:
            return
        from emitter import runlog

        if output and self._redactor is None:
            self._redactor = _redactor(self.s)
        line = runlog.format_line(self.context, self.env, text, output, self._redactor)
        path = runlog.log_path(self.s, self.journal)
        try:
            if self._log is None:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                self._log = open(path, "a", encoding="utf-8")
            self._log.write(line)
            self._log.flush()
        except OSError as exc:
            _write_all(self.stderr_fd, f"hookscope: cannot write log {path}: {exc.strerror}\n".encode())


class _NoJournal:
    """Stands in when the journal could not even be constructed."""

    path = dir = None
    problem = "journal unavailable"

    def append(self, kind, fields):
        return None

    def close(self):
        pass


def open_journal(settings, journal_dir=None, env=None):
    """The hook's Journal; a stand-in that records nothing if even that fails."""
    try:
        return Journal(journal_dir or settings["journal_dir"], node=settings["node"] or None,
                       cluster=settings["cluster"] or (os.environ if env is None else env).get(
                           "SLURM_CLUSTER_NAME", ""),
                       fsync=settings["fsync"], spool_max_bytes=settings["spool_max_bytes"])
    except Exception as exc:  # noqa: BLE001 - a bug of ours: run unrecorded rather than not at all
        from emitter.journal import say

        say(f"hookscope: journal disabled for this hook after an internal error "
            f"({type(exc).__name__}: {exc}); scripts still run\n")
        return _NoJournal()


def run(settings, context, dirs, env=None, journal_dir=None, stdout_fd=1, stderr_fd=2, extra_warnings=(),
        ran=None):
    """Plan and run one hook, journaled.  Returns (status, journal or None);
    the Runner is appended to the list ``ran`` when one is given."""
    from emitter.config import strict_enabled

    knobs = layouts.knobs_for(
        settings["layout"], keep_going=settings["keep_going"],
        **{k: settings[k] for k in ("order", "stop_on_failure", "non_executable", "require_shebang",
                                    "name_filter", "empty")})
    strict = strict_enabled(settings["strict"])
    entries, warnings = layouts.plan(dirs, knobs, strict=strict)
    journal = open_journal(settings, journal_dir, env)
    r = Runner(settings, context, dirs, knobs, strict, journal=journal, env=env,
               stdout_fd=stdout_fd, stderr_fd=stderr_fd)
    if ran is not None:
        ran.append(r)
    try:
        status = r.run(entries, list(extra_warnings) + warnings)
    finally:
        try:
            journal.close()
        except Exception:  # noqa: BLE001 - the status is already decided
            pass
    return status, journal
