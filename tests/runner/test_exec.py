"""``hookscope exec -- SCRIPT [ARGS]``: one script run as its caller (a
platform's own dispatcher) would have run it, journaled.  Real processes."""

import os
import signal
import subprocess
import sys

import pytest

from tests.runner.conftest import ROOT, mkscript, records

from emitter import contract as c
from emitter.execcli import split_argv

HOOKSCOPE = [sys.executable, "-m", "emitter.cli"]


@pytest.fixture
def env(tmp_path):
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\njournal_dir = "{tmp_path / "j"}"\nfsync = false\n')
    return {"PATH": os.environ["PATH"], "HOOKSCOPE_CONFIG": str(conf), "SLURM_SCRIPT_CONTEXT": "epilog_slurmd",
            "SLURM_JOB_ID": "42", "HOOKSCOPE_CACHE_DIR": str(tmp_path / "cache")}


def _exec(env, *args, **kw):
    return subprocess.run([*HOOKSCOPE, "exec", *args], cwd=ROOT, env=env, capture_output=True, **kw)


def test_split_argv():
    assert split_argv(["--context", "x", "--", "/s", "-a"]) == (["--context", "x"], ["/s", "-a"])
    assert split_argv(["--context=x", "/s", "--", "b"]) == (["--context=x", "/s"], ["b"])
    assert split_argv(["--no-fsync", "--journal", "/j", "/s", "-v"]) == (["--no-fsync", "--journal", "/j"],
                                                                         ["/s", "-v"])


def test_status_arguments_and_both_streams_pass_through(tmp_path, env):
    s = mkscript(tmp_path / "d", "part", 'echo "args:$#:$1:$2"; echo oops >&2; exit "$3"')
    p = _exec(env, "--", str(s), "a b", "c", "7")
    assert p.returncode == 7, p.stderr
    assert p.stdout == b"args:3:a b:c\n"
    assert p.stderr == b"oops\n"
    recs = records(tmp_path / "j")
    (hs,) = [r for r in recs if r[c.R_KIND] == c.K_HOOK_STARTED]
    assert hs[c.R_LAYOUT] == "exec" and hs[c.R_CONTEXT] == "epilog_slurmd" and hs[c.R_DIRS] == [str(s)]
    assert hs[c.R_JOB]["job_id"] == "42"
    (end,) = [r for r in recs if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert end[c.R_EXIT] == 7 and end[c.R_PATH] == str(s)
    (he,) = [r for r in recs if r[c.R_KIND] == c.K_HOOK_ENDED]
    assert he[c.R_STATUS] == 7


def test_death_by_signal_is_passed_on_as_the_same_signal(tmp_path, env):
    s = mkscript(tmp_path / "d", "part", "kill -TERM $$")
    p = _exec(env, "--", str(s))
    assert p.returncode == -signal.SIGTERM, p.stderr
    (end,) = [r for r in records(tmp_path / "j") if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert end[c.R_SIGNAL] == signal.SIGTERM
    # a shell caller sees 128+15, as it would have for the script itself
    sh = subprocess.run(["/bin/sh", "-c", '"$@"; echo "rc=$?"', "sh", *HOOKSCOPE, "exec", "--", str(s)],
                        cwd=ROOT, env=env, capture_output=True, text=True)
    assert sh.stdout.strip() == "rc=143"


def test_deepops_style_dispatcher_keeps_its_filters(tmp_path, env):
    """DeepOps' epilog.sh decides which parts run (lastuserjob only when the
    user has no other job here); wrapped with hookscope exec, it still does."""
    d = tmp_path / "epilog.d"
    ran = tmp_path / "ran"
    mkscript(d, "40-cleanup", f"echo 40 >> {ran}")
    mkscript(d, "50-lastuserjob-processes", f"echo lastuser >> {ran}; exit 0")
    mkscript(d, "60-fail", f"echo 60 >> {ran}; exit 3")
    dispatcher = tmp_path / "epilog.sh"
    hs = " ".join(HOOKSCOPE)
    dispatcher.write_text(f"""#!/bin/bash
set -e
OTHER_JOBS=1   # DeepOps asks squeue; here: the user still has a job on the node
for part in {d}/*; do
    case "$part" in
        *lastuserjob*) [ "$OTHER_JOBS" -eq 0 ] || continue ;;
    esac
    {hs} exec -- "$part"
done
""")
    os.chmod(dispatcher, 0o755)
    p = subprocess.run([str(dispatcher)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 3, p.stderr
    assert ran.read_text().split() == ["40", "60"]  # the filter held: no killall -u while a job runs
    ends = [r for r in records(tmp_path / "j") if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert [(os.path.basename(r[c.R_PATH]), r[c.R_EXIT]) for r in ends] == [("40-cleanup", 0), ("60-fail", 3)]


def test_bad_config_never_changes_the_status(tmp_path, env):
    s = mkscript(tmp_path / "d", "part", "exit 5")
    (tmp_path / "h.toml").write_text(f'[runner]\ntimeout_s = inf\njournal_dir = "{tmp_path / "j"}"\n')
    p = _exec(env, "--", str(s))
    assert p.returncode == 5
    assert b"runner.timeout_s" in p.stderr
    (end,) = [r for r in records(tmp_path / "j") if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert end[c.R_EXIT] == 5


def test_usage(env):
    assert _exec(env).returncode == 2
    h = _exec(env, "--help")
    assert h.returncode == 0 and b"Example" in h.stdout


# ---------------------------------------------------------------- hookscope run-parts
@pytest.fixture
def parts(tmp_path):
    d = tmp_path / "parts"
    for n in ("10a", "20b"):
        mkscript(d, n, 'echo "$0 $# $1 $(umask)"; echo "to stderr $0" >&2')
    mkscript(d, "15f", "echo failing; exit 3")
    mkscript(d, "30noexec", "echo never", mode=0o644)
    mkscript(d, "x.sh", "echo dotted name")
    (d / "sub").mkdir()
    return d


@pytest.mark.skipif(not __import__("shutil").which("run-parts"), reason="Debian run-parts not installed")
@pytest.mark.parametrize("args", [[], ["--exit-on-error"], ["--arg=foo", "-a", "b c", "--umask=077"], ["--list"],
                                  ["--test"], ["--regex=^[0-9]+[a-z]$"], ["--reverse"], ["--exit-on-error", "--list"],
                                  ["dangling"]])
def test_run_parts_command_matches_debian_run_parts(tmp_path, env, parts, args):
    if args == ["dangling"]:
        os.symlink(tmp_path / "nowhere", parts / "12-dangling")
        args = ["--exit-on-error"]
    bare = subprocess.run(["run-parts", *args, str(parts)], capture_output=True)
    ours = subprocess.run([*HOOKSCOPE, "run-parts", *args, str(parts)], cwd=ROOT, env=env, capture_output=True)
    assert (ours.returncode, ours.stdout, ours.stderr) == (bare.returncode, bare.stdout, bare.stderr)


def test_run_parts_command_journals_each_part(tmp_path, env, parts):
    p = subprocess.run([*HOOKSCOPE, "run-parts", "--arg", "x", str(parts)], cwd=ROOT, env=env, capture_output=True)
    assert p.returncode == 1  # 15f failed; without --exit-on-error the others still ran
    recs = records(tmp_path / "j")
    (hs,) = [r for r in recs if r[c.R_KIND] == c.K_HOOK_STARTED]
    assert hs[c.R_LAYOUT] == "run-parts" and hs[c.R_CONTEXT] == "epilog_slurmd"
    ends = [(os.path.basename(r[c.R_PATH]), r[c.R_EXIT]) for r in recs if r[c.R_KIND] == c.K_SCRIPT_ENDED]
    assert ends == [("10a", 0), ("15f", 3), ("20b", 0)]
    assert _exec_usage(env, "run-parts", "--bogus", str(parts)).returncode == 1


def _exec_usage(env, *args):
    return subprocess.run([*HOOKSCOPE, *args], cwd=ROOT, env=env, capture_output=True)


# ---------------------------------------------------------------- follow-ups (H11)
_FD_PROBE = ("#!" + sys.executable + " -S\nimport os\n"
             "def is_open(fd):\n    try:\n        os.fstat(fd)\n        return True\n    except OSError:\n"
             "        return False\nprint(' '.join(str(fd) for fd in range(3, 256) if is_open(fd)))\n")


@pytest.mark.parametrize("launcher", ["module", "lean"])
def test_exec_script_gets_the_callers_fds_and_none_of_ours(tmp_path, env, launcher):
    """exec inherits the caller's own fds (fd 9 here) and nothing the runner opened
    (its pipes, journal, config cache): what the script would have had bare."""
    s = tmp_path / "probe"
    s.write_text(_FD_PROBE)
    s.chmod(0o755)
    lean = ROOT / ".venv" / "bin" / "hookscope"
    if launcher == "lean" and "lean launcher" not in lean.read_text()[:200]:
        pytest.skip("no lean launcher installed (make)")
    cmd = [str(lean)] if launcher == "lean" else HOOKSCOPE
    r, w = os.pipe()  # the caller's own fd: r
    try:
        bare = subprocess.run([str(s)], pass_fds=(r,), capture_output=True)
        ours = subprocess.run([*cmd, "exec", "--", str(s)], cwd=ROOT, env=env, pass_fds=(r,), capture_output=True)
    finally:
        os.close(r)
        os.close(w)
    assert bare.stdout == b"%d\n" % r
    assert (ours.returncode, ours.stdout) == (0, bare.stdout), ours.stderr


@pytest.mark.parametrize("case,want", [("noperm", 126), ("noexec_format", 126), ("missing", 127)])
def test_exec_cannot_execute_statuses_match_the_shell(tmp_path, env, case, want):
    """A dispatcher's shell gives 126 when the file exists but cannot be executed
    (EACCES, ENOEXEC) and 127 when it is not found: so does hookscope exec."""
    d = tmp_path / "d"
    d.mkdir()
    s = d / "part"
    if case == "noperm":
        s.write_text("#!/bin/sh\nexit 0\n")
        s.chmod(0o644)
    elif case == "noexec_format":
        s.write_bytes(b"\x7fELF\x02\x01\x01garbage")
        s.chmod(0o755)
    bare = subprocess.run(["/bin/sh", "-c", '"$1"', "sh", str(s)], capture_output=True)
    ours = _exec(env, "--", str(s))
    assert bare.returncode == want
    assert ours.returncode == want, ours.stderr


def test_death_by_signal_through_the_lean_launcher(tmp_path, env):
    """Under the /bin/sh launcher Python is the shell's child: the shell must die by the signal."""
    lean = ROOT / ".venv" / "bin" / "hookscope"
    if "lean launcher" not in lean.read_text()[:200]:
        pytest.skip("no lean launcher installed (make)")
    s = mkscript(tmp_path / "d", "part", "kill -TERM $$")
    p = subprocess.run([str(lean), "exec", "--", str(s)], cwd=ROOT, env=env, capture_output=True)
    assert p.returncode == -signal.SIGTERM, p.stderr
    d = tmp_path / "dir"
    mkscript(d, "10-x", "kill -TERM $$")
    p = subprocess.run([str(lean), "run", "--context", "prolog_slurmd", "--dir", str(d)], cwd=ROOT, env=env,
                       capture_output=True)
    assert p.returncode == -signal.SIGTERM, p.stderr


@pytest.mark.parametrize("launcher", ["module", "lean"])
def test_exec_under_bash_gives_the_script_the_underscore_bash_would(tmp_path, env, launcher):
    """bash sets _ to the path of the command it runs: PART alone gets _=PART,
    ``hookscope exec -- PART`` would get _=hookscope; the script must see PART."""
    lean = ROOT / ".venv" / "bin" / "hookscope"
    if launcher == "lean" and "lean launcher" not in lean.read_text()[:200]:
        pytest.skip("no lean launcher installed (make)")
    s = mkscript(tmp_path / "d", "part", "tr '\\0' '\\n' </proc/$$/environ | grep '^_=' || echo none")
    cmd = " ".join(f"'{a}'" for a in ([str(lean)] if launcher == "lean" else HOOKSCOPE))
    bare = subprocess.run(["/bin/bash", "-c", f"'{s}'; true"], env=env, capture_output=True)
    ours = subprocess.run(["/bin/bash", "-c", f"{cmd} exec -- '{s}'; true"], cwd=ROOT, env=env,
                          capture_output=True)
    assert bare.stdout == f"_={s}\n".encode()
    assert ours.stdout == bare.stdout, ours.stderr
