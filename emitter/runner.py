"""The execution engine: run a planned hook the way the platform would, recorded.

Each script is started with ``os.posix_spawn`` (no ``subprocess``): no
arguments, stdin ``/dev/null``, stdout+stderr on one pipe (TaskProlog: stdout
and stderr on their own pipes, both passed through unchanged), its own process
group, default signal dispositions.  The runner waits on the pipe and a pidfd;
at exit it kills whatever is left of the script's process group, as slurmd
does.  The per-script budget sends SIGTERM to the group, then SIGKILL after a
grace period.  SIGTERM/SIGINT to the runner itself (slurmd's timeout) is
forwarded to the running script's group, followed 5 ms later by SIGKILL
(slurmd waits 10 ms before killing the runner), and no further script runs.

``script_started`` is journaled before the spawn, so a runner killed with -9
leaves a journal that names the script it was running.
"""

import os
import select
import time

import _signal

from emitter import contract as c
from emitter import layouts
from emitter.journal import Journal, _sha256

_SIGTERM, _SIGKILL, _SIGINT = _signal.SIGTERM, _signal.SIGKILL, _signal.SIGINT
#: Reset to SIG_DFL in the child: Python ignores SIGPIPE/SIGXFSZ, which a
#: script would otherwise inherit (subprocess's restore_signals does the same).
_CHILD_SIGDEF = (_signal.SIGPIPE, _signal.SIGXFSZ, _SIGTERM, _SIGINT, _signal.SIGHUP, _signal.SIGQUIT,
                 _signal.SIGCHLD)
_FORWARD_KILL_AFTER_S = 0.005
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
                 "exported", "unset")

    def __init__(self):
        self.exit_code = None
        self.signal = None
        self.timed_out = False
        self.duration_ns = 0
        self.output = b""
        self.truncated = False
        self.exported = []
        self.unset = []


class _Tail:
    """The last ``limit`` bytes of a stream, without unbounded growth."""

    __slots__ = ("limit", "buf", "truncated")

    def __init__(self, limit):
        self.limit, self.buf, self.truncated = limit, bytearray(), False

    def add(self, data):
        self.buf += data
        if len(self.buf) > 2 * self.limit + _READ:
            del self.buf[: len(self.buf) - self.limit]
            self.truncated = True

    def value(self):
        if len(self.buf) > self.limit:
            self.truncated = True
            return bytes(self.buf[len(self.buf) - self.limit:]) if self.limit else b""
        return bytes(self.buf)


class _TaskParser:
    """Names from TaskProlog's stdout protocol (export NAME=value / unset NAME).

    Values are never recorded: they may be secrets.
    """

    __slots__ = ("partial", "exported", "unset")

    def __init__(self):
        self.partial, self.exported, self.unset = b"", [], []

    def feed(self, data, final=False):
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        if len(self.partial) > 65536:  # a line that long is not a directive
            self.partial = b""
        for line in lines:
            line = line.strip()
            if line.startswith(b"export "):
                name = line[7:].split(b"=", 1)[0].strip()
                if name:
                    self.exported.append(name.decode("utf-8", "replace"))
            elif line.startswith(b"unset "):
                name = line[6:].strip()
                if name:
                    self.unset.append(name.decode("utf-8", "replace"))


def _write_all(fd, data):
    """Pass output through; a closed or broken stdout must not stop the hook."""
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
        return True
    except OSError:
        return False


def _killpg(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def decode_status(status):
    """(exit_code, signal) from a waitpid status, shell style (128+N for signal N)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


class Runner:
    """Runs one hook: the planned entries of one context, journaled."""

    def __init__(self, settings, context, dirs, knobs, strict, journal=None, env=None,
                 stdout_fd=1, stderr_fd=2):
        self.s = settings
        self.context = context
        self.dirs = list(dirs)
        self.knobs = knobs
        self.strict = strict
        self.env = dict(os.environ if env is None else env)
        if "PATH" not in self.env:
            self.env["PATH"] = settings["safe_path"]
        self.stdout_fd, self.stderr_fd = stdout_fd, stderr_fd
        self.journal = journal
        self.task = context == "prolog_task"
        self.timeout_s = float(settings["timeout_s"] or 0)
        self.grace_s = float(settings["kill_grace_s"])
        self.terminated = None  # signal number once the runner was told to stop
        self._child = None
        self._kill_at = None
        self._redactor = None
        self._log = None

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        # slurmd's own timeout: SIGTERM to our group, SIGKILL 10 ms later.  The
        # script is in a group of its own, so it gets what slurmd would have
        # sent it, with the same 5-10 ms between the two signals.
        self.terminated = signum
        if self._child is not None:
            _killpg(self._child, _SIGTERM)
            time.sleep(_FORWARD_KILL_AFTER_S)
            _killpg(self._child, _SIGKILL)

    # ---------------------------------------------------------------- one script
    def spawn(self, path, result):
        """Start ``path``; returns (pid, [(fd, is_stdout)]) or None if exec failed."""
        fds = []
        out_r, out_w = os.pipe()
        fds.append((out_r, True))
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, out_w, 1)]
        err_w = None
        if self.task:
            err_r, err_w = os.pipe()
            fds.append((err_r, False))
            actions.append((os.POSIX_SPAWN_DUP2, err_w, 2))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, out_w, 2))
        try:
            pid = os.posix_spawn(path, [path], self.env, file_actions=actions, setpgroup=0,
                                 setsigdef=_CHILD_SIGDEF, setsigmask=())
        except OSError as exc:
            for fd, _ in fds:
                os.close(fd)
            result.exit_code = layouts.EXIT_NOT_EXECUTABLE
            result.output = f"hookscope: cannot execute {path}: {exc.strerror}\n".encode()
            return None
        finally:
            os.close(out_w)
            if err_w is not None:
                os.close(err_w)
        return pid, fds

    def wait(self, pid, fds, result, t0):
        tail = _Tail(self.s["output_bytes"])
        parser = _TaskParser() if self.task else None
        passthrough = self.s["passthrough"]
        self._child = pid
        if self.terminated is not None:  # the signal arrived between scripts
            self._on_signal(self.terminated, None)
        deadline = (t0 + self.timeout_s) if self.timeout_s else None
        poller = select.poll()
        open_fds = {}
        for fd, is_out in fds:
            poller.register(fd, select.POLLIN)
            open_fds[fd] = is_out
        try:
            pidfd = os.pidfd_open(pid)
            poller.register(pidfd, select.POLLIN)
        except (AttributeError, OSError):
            pidfd = None
        while True:
            now = time.monotonic()
            wake = [t for t in (deadline, self._kill_at) if t is not None]
            if pidfd is None:
                wake.append(now + 0.005)  # no pidfd (old kernel): poll waitpid
            if wake:
                timeout_ms = max(0, int((min(wake) - now) * 1000 + 0.999))
            else:
                timeout_ms = None
            events = poller.poll(timeout_ms)
            for fd, ev in events:
                if fd == pidfd:
                    continue
                self._read(fd, open_fds, poller, tail, parser, passthrough)
            # WNOWAIT: the script stays a zombie, so its PID (= its group ID)
            # cannot be reused before the group is killed below.
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = time.monotonic()
            if self._kill_at is not None and now >= self._kill_at:
                _killpg(pid, _SIGKILL)
                self._kill_at = None
            if deadline is not None and now >= deadline:
                result.timed_out = True
                _killpg(pid, _SIGTERM)
                self._kill_at = now + self.grace_s
                deadline = None
        result.duration_ns = int((time.monotonic() - t0) * 1e9)
        self._child = None
        self._kill_at = None
        # The script is gone; whatever it left in its group goes too (slurmd does
        # this), then the pipes are drained without waiting for a writer that
        # escaped the group.
        _killpg(pid, _SIGKILL)
        status = os.waitpid(pid, 0)[1]
        for fd in list(open_fds):
            os.set_blocking(fd, False)
            while fd in open_fds:
                try:
                    self._read(fd, open_fds, poller, tail, parser, passthrough)
                except BlockingIOError:
                    break
        for fd in open_fds:
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        result.exit_code, result.signal = decode_status(status)
        result.output = tail.value()
        result.truncated = tail.truncated
        if parser is not None:
            parser.feed(b"", final=True)
            result.exported, result.unset = parser.exported, parser.unset

    def _read(self, fd, open_fds, poller, tail, parser, passthrough):
        data = os.read(fd, _READ)
        if not data:
            poller.unregister(fd)
            os.close(fd)
            del open_fds[fd]
            return
        tail.add(data)
        is_out = open_fds[fd]
        if parser is not None and is_out:
            parser.feed(data)
        if passthrough or (parser is not None and is_out):
            # TaskProlog stdout always reaches slurmstepd: it is the protocol.
            _write_all(self.stdout_fd if is_out else self.stderr_fd, data)

    # ---------------------------------------------------------------- records
    def _stat_fields(self, entry, index):
        f = {c.R_INDEX: index, c.R_PATH: entry.path, c.R_SHA256: None, c.R_SIZE: None,
             c.R_MODE: None, c.R_UID: None, c.R_MTIME: None}
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
            from emitter.redact import Redactor

            self._redactor = Redactor(self.s["redact"], self.s["redact_builtin"])
        return self._redactor(result.output.decode("utf-8", "replace"))

    def _j(self, kind, fields):
        # The journal never raises OSError; this also contains a bug of ours,
        # so recording can fail but running the scripts cannot.
        if self.journal is not None:
            try:
                self.journal.append(kind, fields)
            except Exception as exc:  # noqa: BLE001
                _write_all(self.stderr_fd, f"hookscope: journal disabled for this hook after an internal "
                                           f"error ({type(exc).__name__}: {exc}); scripts still run\n".encode())
                self.journal = None

    # ---------------------------------------------------------------- the hook
    def run(self, entries, warnings=()):
        """Run ``entries`` (from layouts.plan); returns the exit status for the platform."""
        t0 = time.monotonic()
        warnings = list(warnings)
        counted = layouts.counted(entries)
        if not counted:
            if self.knobs["empty"] == "fail" and not self.s["empty_ok"]:
                warnings.append(f"no scripts in {', '.join(self.dirs) or '(no directory)'}: "
                                f"the {self.s['layout']} layout fails an empty hook (status 1); "
                                "set runner.empty_ok = true to allow it")
                empty_status = 1
            else:
                warnings.append(f"no scripts in {', '.join(self.dirs) or '(no directory)'}; nothing ran")
                empty_status = 0
        self._j(c.K_HOOK_STARTED, {
            c.R_CONTEXT: self.context, c.R_LAYOUT: self.s["layout"], c.R_DIRS: self.dirs,
            c.R_TIMEOUT_S: self.s["timeout_s"],
            c.R_JOB: job_metadata(self.env),
            c.R_WARNINGS: list(warnings),
        })
        try:
            # An inherited SIGCHLD=SIG_IGN would auto-reap our scripts and hide
            # their status from waitpid.
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            old_term = _signal.signal(_SIGTERM, self._on_signal)
            old_int = _signal.signal(_SIGINT, self._on_signal)
        except ValueError:  # not the main thread (library use): no forwarding
            old_term = old_int = None
        status, failed_index, n = 0, None, 0
        try:
            if not counted:
                status = empty_status
                for e in entries:
                    self._skipped(e)
            index = 0
            for e in entries:
                if not counted:
                    break
                if e.action == layouts.SKIP:
                    self._skipped(e)
                    continue
                if self.terminated is not None:
                    break
                code = self._one(e, index)
                n += 1
                if code and failed_index is None:
                    failed_index = index
                    status = code if self.knobs["failure_status"] == "script" else 1
                index += 1
                if code and self.knobs["stop_on_failure"]:
                    break
                if self.terminated is not None:
                    break
            if self.terminated is not None and status == 0:
                status = 128 + self.terminated
                warnings.append(f"runner received signal {self.terminated}; remaining scripts not run")
        finally:
            if old_term is not None:
                _signal.signal(_SIGTERM, old_term)
                _signal.signal(_SIGINT, old_int)
            self._j(c.K_HOOK_ENDED, {c.R_STATUS: status, c.R_N_SCRIPTS: n, c.R_FAILED_INDEX: failed_index,
                                     c.R_DURATION_NS: int((time.monotonic() - t0) * 1e9),
                                     c.R_WARNINGS: warnings})
            if self._log is not None:
                self._log.close()
        return status

    def _skipped(self, e):
        self._j(c.K_SCRIPT_SKIPPED, {c.R_INDEX: None, c.R_PATH: e.path, c.R_REASON: e.reason})
        if e.warn:
            self._tw_log(f"WARNING skipped {e.path}: {e.reason}")

    def _one(self, entry, index):
        self._j(c.K_SCRIPT_STARTED, self._stat_fields(entry, index))
        r = ScriptResult()
        refused = None
        t0 = time.monotonic()
        if entry.action == layouts.RUN:
            spawned = self.spawn(entry.path, r)
            if spawned is not None:
                self.wait(spawned[0], spawned[1], r, t0)
            else:
                r.duration_ns = int((time.monotonic() - t0) * 1e9)
                if self.s["passthrough"]:
                    _write_all(self.stderr_fd, r.output)
        elif entry.action == layouts.FAIL:
            r.exit_code = layouts.EXIT_NOT_EXECUTABLE
            r.output = f"hookscope: {entry.path}: {entry.reason}\n".encode()
            if self.s["passthrough"]:
                _write_all(self.stderr_fd, r.output)
        else:  # REFUSE
            r.exit_code = layouts.EXIT_REFUSED
            refused = entry.reason
            r.output = f"hookscope: refused {entry.path}: {entry.reason}\n".encode()
            _write_all(self.stderr_fd, r.output)
        failed = r.exit_code != 0
        fields = {c.R_INDEX: index, c.R_PATH: entry.path, c.R_EXIT: r.exit_code, c.R_SIGNAL: r.signal,
                  c.R_TIMED_OUT: r.timed_out, c.R_REFUSED: refused, c.R_DURATION_NS: r.duration_ns,
                  c.R_OUTPUT: self._output_for_record(r, failed), c.R_OUTPUT_TRUNCATED: r.truncated}
        if self.task:
            fields[c.R_EXPORTED] = r.exported
            fields[c.R_UNSET] = r.unset
        self._j(c.K_SCRIPT_ENDED, fields)
        if self.s["layout"] == "tensorwave" or self.s["log_file"]:
            self._tw_log(f"path={entry.path} exit={r.exit_code}" + (" timed_out" if r.timed_out else ""),
                         r.output if failed else None)
        return r.exit_code

    # ---------------------------------------------------------------- per-node log (tensorwave)
    def log_path(self):
        node = self.journal.node if self.journal is not None else os.uname().nodename.split(".")[0]
        p = self.s["log_file"] or "/var/log/hookscope/hooks-{node}.log"
        return p.replace("{node}", node)

    def _tw_log(self, text, output=None):
        if self.s["layout"] != "tensorwave" and not self.s["log_file"]:
            return
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = (f"{ts} context={self.context} job={self.env.get('SLURM_JOB_ID', '-')} "
                f"user={self.env.get('SLURM_JOB_USER', '-')} {text}\n")
        if output:
            out = output.decode("utf-8", "replace")
            if self._redactor is None:
                from emitter.redact import Redactor

                self._redactor = Redactor(self.s["redact"], self.s["redact_builtin"])
            line += "".join(f"    | {ln}\n" for ln in self._redactor(out).splitlines())
        try:
            if self._log is None:
                p = self.log_path()
                os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
                self._log = open(p, "a", encoding="utf-8")
            self._log.write(line)
            self._log.flush()
        except OSError as exc:
            _write_all(self.stderr_fd, f"hookscope: cannot write log {self.log_path()}: {exc.strerror}\n".encode())


class _NoJournal:
    """Stands in when the journal could not even be constructed."""

    path = dir = None
    problem = "journal unavailable"

    def append(self, kind, fields):
        return None

    def close(self):
        pass


def run(settings, context, dirs, env=None, journal_dir=None, stdout_fd=1, stderr_fd=2, extra_warnings=()):
    """Plan and run one hook, journaled.  Returns (status, journal or None)."""
    from emitter.config import strict_enabled

    knobs = layouts.knobs_for(
        settings["layout"], keep_going=settings["keep_going"],
        **{k: settings[k] for k in ("order", "stop_on_failure", "non_executable", "require_shebang",
                                    "name_filter", "empty")})
    strict = strict_enabled(settings["strict"])
    entries, warnings = layouts.plan(dirs, knobs, strict=strict)
    env = dict(os.environ if env is None else env)
    try:
        journal = Journal(journal_dir or settings["journal_dir"], node=settings["node"] or None,
                          cluster=settings["cluster"] or env.get("SLURM_CLUSTER_NAME", ""),
                          fsync=settings["fsync"], spool_max_bytes=settings["spool_max_bytes"])
    except Exception as exc:  # noqa: BLE001 - a bug of ours: run unrecorded rather than not at all
        from emitter.journal import say

        say(f"hookscope: journal disabled for this hook after an internal error "
            f"({type(exc).__name__}: {exc}); scripts still run\n")
        journal = _NoJournal()
    r = Runner(settings, context, dirs, knobs, strict, journal=journal, env=env,
               stdout_fd=stdout_fd, stderr_fd=stderr_fd)
    try:
        status = r.run(entries, list(extra_warnings) + warnings)
    finally:
        try:
            journal.close()
        except Exception:  # noqa: BLE001 - the status is already decided
            pass
    return status, journal
