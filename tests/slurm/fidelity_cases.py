"""The case table of the differential fidelity tier (see fidelity.py and
docs/slurm-tier.md).  One ``Case`` per hook directory; its ``id`` is the test
id.  Shell bodies may use ``{M}`` (the marker file), ``{O}`` (the outside
directory) and ``{B}`` (the tier's base directory).  No PATH is given to
prologs, so every command is absolute.

To add a case: append a ``Case`` here; nothing else.  Keep each under a few
seconds, and name the issue class it covers in ``why``.
"""

from emitter import contract as C

from tests.slurm.fidelity import T_BARE, Case, Entry


def probe(tag="probe"):
    # "zz-" sorts last, so slurmd's reverse glob order runs it first
    return Entry(f"zz-{tag}", kind="probe", tag=tag)


def sh(name, body="exit 0\n", **kw):
    return Entry(name, body=body, **kw)


def timed_out(name):
    """Journal check: the script ``name`` ended with timed_out = true."""
    def check(recs):
        ends = [r for r in recs if r.get(C.R_KIND) == C.K_SCRIPT_ENDED
                and str(r.get(C.R_PATH, "")).endswith("/" + name)]
        if not ends:
            return [f"no script_ended record for {name}"]
        return [] if ends[-1].get(C.R_TIMED_OUT) is True else \
            [f"{name}: timed_out={ends[-1].get(C.R_TIMED_OUT)!r}, exit={ends[-1].get(C.R_EXIT)!r}"]
    return check


def _both(id_, entries, **kw):
    """The same directory as a prolog case and as an epilog case."""
    return [Case(f"prolog-{id_}", "prolog", list(entries), **kw),
            Case(f"epilog-{id_}", "epilog", list(entries), **kw)]


HANG = f"/bin/sleep {3 * T_BARE}\n"
#: Wait (up to 20 s) until a background child has set itself up.
READY = "i=0; while [ ! -e {O}/ready ] && [ $i -lt 400 ]; do /bin/sleep 0.05; i=$((i+1)); done\n"
#: A TERM trap must run inside slurmd's 10 ms between SIGTERM and SIGKILL; as
#: a real-time (SCHED_FIFO) process it is scheduled at once even on a loaded
#: machine, so the race is decided by the runner, not by the load.
FIFO = "/usr/bin/chrt -f 10 /bin/sh -c "
FLOOD = "/usr/bin/head -c 4000000 /dev/zero | /usr/bin/tr '\\0' 'x' | /usr/bin/fold -w 100\n"

CASES = [
    # --- process state: environment, signals, fds, umask, limits, cwd, pgid/sid, stdin
    *_both("probe", [probe(), sh("10-ok")], why="process state byte for byte"),
    Case("prolog-locale", "prolog", [probe(), sh("10-wc", "[ \"$(printf '\\303\\251' | /usr/bin/wc -m)\" = 2 ] || exit 9\n")],
         why="LC_CTYPE=C.UTF-8 leaking from Python's locale coercion makes wc -m count 1"),
    Case("prolog-path", "prolog", [sh("10-nopath", "[ -z \"${PATH+set}\" ] || exit 8\n")],
         why="slurmd gives no PATH; none may be added"),
    Case("prolog-sigpipe", "prolog", [Entry("10-pipefail", kind="bash", body=(
        "set -o pipefail\n/usr/bin/seq 1 1000000 | /usr/bin/head -1 >/dev/null\nrc=$?\n"
        "[ $rc -eq 0 ] || [ $rc -eq 141 ]\n"))],
         why="SIGPIPE ignored by slurmd (systemd) is inherited: seq gets EPIPE and exits 1"),
    *_both("stdin-write", [sh("10-write", "set -e\necho probe >&0\n")],
           why="stdin is /dev/null opened read-write"),
    Case("prolog-stdin-read", "prolog", [sh("10-read", "/bin/cat >/dev/null\nread x || true\n"
                                            "/usr/bin/head -c 1 >/dev/null\n")], why="stdin readers get EOF"),
    Case("prolog-umask-cwd", "prolog", [sh("10-check", "[ \"$(umask)\" = 0022 ] || exit 6\n[ \"$(pwd)\" = / ] || exit 7\n")],
         why="umask and cwd as slurmd sets them"),
    # --- order, stop, exit codes
    *_both("order", [sh("10-a"), sh("20-b"), sh("30-c"), probe()], why="reverse glob order"),
    *_both("fail-stops", [sh("10-never"), sh("20-fails", "echo 'gpu0: XID 79' >&2\nexit 3\n"), sh("30-first")],
           why="stop at the first failure, its status is the hook's"),
    *_both("exit-255", [sh("10-ok"), sh("20-255", "exit 255\n")], why="exit code 255"),
    Case("prolog-exit-256", "prolog", [sh("10-256", "exit 256\n")], why="exit 256 is 0 to the kernel"),
    Case("prolog-exit-1-quiet", "prolog", [sh("10-quiet", "exit 1\n")], why="failure with no output"),
    Case("prolog-stderr-fail", "prolog", [sh("10-err", "echo to-stderr >&2\nexit 5\n")], why="stderr output on failure"),
    Case("prolog-no-newline", "prolog", [sh("10-nonl", "printf 'no newline'\nexit 7\n")], why="output without a newline"),
    # --- signals
    Case("prolog-signal-kill", "prolog", [sh("10-kill", "kill -KILL $$\n")], why="killed by SIGKILL: slurmd logs 0:9"),
    Case("prolog-signal-term", "prolog", [sh("10-term", "kill -TERM $$\n")], why="killed by SIGTERM: slurmd logs 0:15"),
    Case("prolog-signal-usr1", "prolog", [sh("10-usr1", "kill -USR1 $$\n")], why="killed by SIGUSR1"),
    Case("prolog-kill-own-group", "prolog", [sh("10-killpg", "kill -TERM 0\n/bin/sleep 1\n")],
         why="a script that signals its own process group"),
    Case("prolog-exec", "prolog", [sh("10-exec", "exec /bin/true\n")], why="a script that execs"),
    # --- the output pipe, EOF and leftovers
    *_both("bg-holds-stdout", [sh("10-bg", "(/bin/sleep 2; echo late >> {M}) &\nexit 0\n")],
           why="a background child holding stdout delays the hook until EOF"),
    Case("prolog-bg-detached-killed", "prolog",
         [sh("10-bg", "(/bin/sleep 1; echo survived >> {M}) >/dev/null 2>&1 &\nexit 0\n")], linger=2,
         why="at EOF slurmd kills the group: a detached child in it dies"),
    Case("prolog-sigterm-trap", "prolog",
         [sh("10-trap", FIFO + "'trap \"echo trapped >> {M}; exit 0\" TERM; : > {O}/ready; /bin/sleep 5 & wait' "
                        ">/dev/null 2>&1 &\n" + READY)], linger=1,
         why="SIGTERM before SIGKILL: a child's TERM trap runs"),
    Case("prolog-setsid-holds", "prolog",
         [sh("10-setsid", "/usr/bin/setsid /bin/sh -c '/bin/sleep 2; echo setsid-done >> {M}' &\n/bin/sleep 0.2\n")],
         linger=2.5, why="a setsid child holding stdout: slurmd waits for EOF"),
    Case("prolog-setsid-daemon", "prolog",
         [sh("10-daemon", "/usr/bin/setsid /bin/sh -c ': > {O}/ready; /bin/sleep 1; echo daemon-alive >> {M}' "
                          ">/dev/null 2>&1 </dev/null &\n" + READY)],
         linger=2, why="a daemon in its own session survives the hook"),
    Case("prolog-close-stdout-then-work", "prolog",
         [sh("10-close", "exec >/dev/null 2>&1\n/bin/sleep 1\necho after-sleep >> {M}\n")], linger=1.5,
         why="slurmd stops at EOF, not at the script's exit"),
    # --- names and file kinds
    Case("prolog-name-space", "prolog", [sh("10 has space"), sh("20-plain")], why="odd name: space"),
    Case("prolog-name-unicode", "prolog", [sh("20-ünïcødé", tag="unicode"), sh("10-plain")], why="odd name: unicode"),
    Case("prolog-name-newline", "prolog", [sh(b"30-new\nline", tag="newline"), sh("10-plain")], why="odd name: newline"),
    Case("prolog-name-leading-dot", "prolog", [sh(".hidden"), sh("10-visible")], why="glob(3) skips dotfiles"),
    Case("prolog-name-tilde", "prolog", [sh("40-backup~"), sh("10-plain")], why="editor backup: glob runs it"),
    Case("prolog-name-dpkg-old", "prolog", [sh("50-x.dpkg-old"), sh("10-plain")], why="dpkg leftover: glob runs it"),
    Case("prolog-no-shebang", "prolog", [Entry("10-noshebang", kind="raw", data=b"echo x\nexit 0\n"), sh("05-after")],
         why="no #!: execve fails with ENOEXEC"),
    Case("prolog-empty-file", "prolog", [Entry("10-empty", kind="raw", data=b"")], why="an empty executable"),
    Case("prolog-missing-interpreter", "prolog",
         [Entry("10-missing", kind="raw", data=b"#!/nonexistent/interp\nexit 0\n")], why="#! names no file"),
    Case("prolog-subdir", "prolog", [sh("10-ok"), Entry("15-subdir", kind="dir"), sh("20-ok")],
         why="a sub-directory matches the glob"),
    *_both("non-executable", [sh("10-ok"), sh("20-noexec", mode=0o644)], why="non-executable: 127"),
    Case("prolog-symlink-outside", "prolog", [Entry("10-link", kind="link", target="{O}/target")],
         outside={"target": ("exit 0\n", 0o755)},
         why="root-owned 0755 script reached through a symlink from outside the directory"),
    Case("prolog-symlink-broken", "prolog", [sh("10-ok"), Entry("20-dangling", kind="link", target="{O}/missing")],
         why="a dangling symlink"),
    # --- permissions: run what slurmd runs (unsafe modes are findings, not refusals)
    Case("prolog-perm-group-writable", "prolog", [sh("10-gw", mode=0o775)], why="group-writable: slurmd runs it"),
    Case("prolog-perm-world-writable", "prolog", [sh("10-ww", mode=0o777)], why="world-writable: slurmd runs it"),
    Case("prolog-perm-not-root-owned", "prolog", [sh("10-nobody", owner=65534)], why="owned by nobody: slurmd runs it"),
    Case("prolog-symlink-outside-writable", "prolog", [Entry("10-link", kind="link", target="{O}/target")],
         outside={"target": ("exit 0\n", 0o777)}, why="a symlink to a world-writable script outside"),
    Case("prolog-empty-dir", "prolog", [], why="an empty glob fails"),
    Case("prolog-only-dotfiles", "prolog", [sh(".only")], why="a glob of only dotfiles is empty"),
    # --- output: floods, invalid UTF-8, escapes
    Case("prolog-flood-ok", "prolog", [sh("10-flood", FLOOD)], why="4 MB of output, passing"),
    *_both("flood-fail", [sh("10-flood", FLOOD + "exit 1\n")], why="4 MB of output, failing"),
    Case("prolog-flood-one-word-fail", "prolog",
         [sh("10-word", "/usr/bin/head -c 32768 /dev/zero | /usr/bin/tr '\\0' 'a'\nexit 1\n")],
         why="a 32 KiB word: redaction must be linear"),
    Case("prolog-invalid-utf8-fail", "prolog", [sh("10-bad", "printf '\\377\\376 bad \\300\\n'\nexit 2\n")],
         why="invalid UTF-8 in the output"),
    Case("prolog-invalid-utf8-ok", "prolog", [sh("10-bad", "printf '\\377\\376 bad \\300\\n'\n")],
         why="invalid UTF-8, passing"),
    Case("prolog-escapes-fail", "prolog", [sh("10-esc", "printf '\\033]0;title\\007\\033[31mred\\n'\nexit 4\n")],
         why="terminal escapes in the output"),
    # --- many scripts
    Case("prolog-200-scripts", "prolog", [sh(f"{i:03d}-noop", tag=f"s{i:03d}") for i in range(200)],
         faster_ok=True, why="200 no-op scripts (slurmd pays 10 ms per script; hookscope may be faster)"),
    Case("epilog-20-scripts", "epilog", [sh(f"{i:02d}-noop", tag=f"s{i:02d}") for i in range(20)],
         faster_ok=True, why="20 epilog scripts"),
    # --- timeouts (PrologEpilogTimeout = T_BARE per script)
    Case("prolog-timeout-scope", "prolog",
         [sh("10-slow", f"/bin/sleep {T_BARE * 2 / 3:.1f}\n"), sh("20-slow", f"/bin/sleep {T_BARE * 2 / 3:.1f}\n")],
         why="each script gets the full timeout: two scripts of 2/3 T pass"),
    *_both("timeout-hang", [sh("10-hang", "echo hanging\n" + HANG)], journal=timed_out("10-hang"),
           why="a hung script is stopped after T with SIGTERM, SIGKILL 10 ms later"),
    Case("prolog-timeout-trap", "prolog",
         [sh("10-trap", "exec " + FIFO + "'trap \"echo term-trapped >> {M}; exit 0\" TERM\n"
                        + HANG.replace("\n", " &\nwait'\n"))],
         why="at the timeout the script's TERM trap runs before the SIGKILL"),
    Case("prolog-timeout-ignores-term", "prolog", [sh("10-ignore", "trap '' TERM\n" + HANG)],
         why="a script ignoring SIGTERM is SIGKILLed 10 ms later"),
    Case("prolog-bg-holds-past-timeout", "prolog", [sh("10-bg", f"/bin/sleep {3 * T_BARE} &\nexit 0\n")],
         why="a background child holding stdout past the timeout: the script exited 0, the hook times out"),
    Case("prolog-timeout-second", "prolog", [sh("10-never"), sh("20-hang", HANG)], journal=timed_out("20-hang"),
         why="the timeout is a failure that stops the glob"),
]
