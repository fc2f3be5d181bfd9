"""What a script inherits, bare vs through hookscope, byte for byte.

The fast local version of the Slurm tier's probe comparison (tests/slurm):
``slurmd_like.py`` starts a command exactly as slurmd's run_command() does
(SIGPIPE ignored and blocked, /dev/null O_RDWR, one pipe, fds >= 3 closed, a
group of its own).  The probe (tests/slurm/probe.pl: Perl, which changes
nothing at start-up) is run by it directly, and through the lean
``hookscope-hook`` launcher; the two dumps of process state and the two
environment blocks must be identical.
"""

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.conftest import ROOT

PROBE = ROOT / "tests" / "slurm" / "probe.pl"
HARNESS = Path(__file__).with_name("slurmd_like.py")

#: An environment slurmd could give: no PATH, no locale (CPython would coerce
#: LC_CTYPE), invalid UTF-8, a name Python's os.environ keeps but a shell drops,
#: an order that is not sorted; and what only execve(2) can give (a name twice,
#: an entry without "="), passed on as is too.
ENV_BLOCK = [b"SLURM_SCRIPT_CONTEXT=prolog_slurmd", b"ZZ_LAST_FIRST=1", b"SLURM_JOB_ID=42",
             b"SPANK_X=caf\xe9 \xff\xfe", b"a-b.c=odd name", b"SLURMD_NODENAME=n1", b"EMPTY=",
             b"DUP=first", b"DUP=second", b"no-equals-sign"]


@pytest.fixture(scope="module")
def hook_venv(tmp_path_factory):
    from emitter import launcher

    venv = tmp_path_factory.mktemp("venv")
    (venv / "bin").mkdir()
    os.symlink(sys.executable, venv / "bin" / "python")
    launcher.install(str(venv))
    return venv / "bin" / "hookscope-hook"


def _probe_dir(d, out):
    d.mkdir(parents=True, exist_ok=True)
    p = d / "50-probe"
    p.write_text(PROBE.read_text().replace("__OUT__", str(out)))
    p.chmod(0o755)
    return p


def _extra_state():
    """More than slurmd's own: the runner must pass on whatever it was given."""
    os.umask(0o027)
    resource.setrlimit(resource.RLIMIT_NOFILE, (777, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # slurmd catches SIGHUP (reconfigure), so its children start with the
    # default; a test run under nohup would otherwise pass SIG_IGN on.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1, signal.SIGWINCH])


def _slurmd(target, env_items, tmp_path, cwd, timeout_ms=20000, args=()):
    envfile = tmp_path / f"env-{len(list(tmp_path.iterdir()))}"
    envfile.write_bytes(b"\0".join(env_items) + b"\0")
    r = subprocess.run([sys.executable, str(HARNESS), str(envfile), str(timeout_ms), "--", str(target), *args],
                       cwd=cwd, capture_output=True, timeout=60, preexec_fn=_extra_state)
    assert r.returncode == 0, r.stderr
    head, _, out = r.stdout.partition(b"\n")
    return head.decode(), out


def _state(prefix):
    return Path(f"{prefix}.state").read_text(), Path(f"{prefix}.env").read_bytes()


def _config(tmp_path, d):
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{tmp_path / "j"}"\nfsync = false\nstrict = false\n'
                   f'[runner.dirs]\nprolog_slurmd = "{d}"\n')
    return cfg


@pytest.fixture(params=["/bin/sh", "/bin/bash"])
def any_shell_hook(request, hook_venv, tmp_path):
    """The launcher as installed (/bin/sh: dash on Debian), and run by bash, which is
    /bin/sh on RHEL-family nodes (bash ignores SIGQUIT itself; dash clears the mask of
    the children it vforks: neither may reach the scripts)."""
    if not os.path.exists(request.param):
        pytest.skip(f"{request.param} is not installed")
    hook = tmp_path / "hookscope-hook"
    text = hook_venv.read_text()
    hook.write_text(f"#!{request.param}\n" + text.split("\n", 1)[1])
    hook.chmod(0o755)
    return hook


def test_probe_sees_the_same_process_state_bare_and_through_the_launcher(tmp_path, any_shell_hook):
    hook_venv = any_shell_hook
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bare = _probe_dir(tmp_path / "bare", tmp_path / "out-bare")
    wrapped_dir = tmp_path / "wrapped"
    _probe_dir(wrapped_dir, tmp_path / "out-hook")
    env = ENV_BLOCK + [b"HOOKSCOPE_CONFIG=" + os.fsencode(_config(tmp_path, wrapped_dir))]
    head_b, out_b = _slurmd(bare, env, tmp_path, cwd)
    head_h, out_h = _slurmd(hook_venv, env, tmp_path, cwd)
    assert head_b == head_h == "status=0 timed_out=0", (out_b, out_h)
    state_b, env_b = _state(tmp_path / "out-bare")
    state_h, env_h = _state(tmp_path / "out-hook")
    state_h = state_h.replace(str(wrapped_dir), str(bare.parent))  # the probe's own path (cmdline)
    assert state_h == state_b
    assert env_h == env_b == b"\0".join(env) + b"\0"
    mask = lambda key: int(state_b.split(f"{key}:\t")[1][:16], 16)  # noqa: E731
    bits = lambda *sigs: sum(1 << (s - 1) for s in sigs)  # noqa: E731
    want = bits(signal.SIGPIPE, signal.SIGUSR1, signal.SIGWINCH)
    assert mask("SigBlk") & want == want  # the harness's, plus whatever this machine's parents give
    want = bits(signal.SIGINT, signal.SIGPIPE, signal.SIGUSR2)
    assert mask("SigIgn") & want == want


def test_without_the_launcher_only_sigpipe_and_sigxfsz_are_unknown(tmp_path):
    """python -m ...: CPython has ignored SIGPIPE/SIGXFSZ before our code runs;
    everything else (mask, SIGINT, env bytes, fds) is still exact."""
    d = tmp_path / "wrapped"
    _probe_dir(d, tmp_path / "out-hook")
    bare = _probe_dir(tmp_path / "bare", tmp_path / "out-bare")
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!{sys.executable} -IS\nimport sys; sys.path.insert(0, {str(ROOT)!r})\n"
                    "from emitter.hook import main; sys.exit(main())\n")
    hook.chmod(0o755)
    env = ENV_BLOCK + [b"HOOKSCOPE_CONFIG=" + os.fsencode(_config(tmp_path, d))]
    assert _slurmd(bare, env, tmp_path, tmp_path)[0] == "status=0 timed_out=0"
    assert _slurmd(hook, env, tmp_path, tmp_path)[0] == "status=0 timed_out=0"
    state_b, env_b = _state(tmp_path / "out-bare")
    state_h, env_h = _state(tmp_path / "out-hook")
    assert env_h == env_b, "no LC_CTYPE, no PATH, bytes intact"
    ign = lambda s: int(s.split("SigIgn:\t")[1][:16], 16)  # noqa: E731
    blk = lambda s: int(s.split("SigBlk:\t")[1][:16], 16)  # noqa: E731
    assert blk(state_h) == blk(state_b)
    assert ign(state_h) == ign(state_b) & ~(1 << (signal.SIGPIPE - 1))
    fds = lambda s: [ln for ln in s.splitlines() if ln.startswith("fd ")]  # noqa: E731
    assert fds(state_h) == fds(state_b)


def test_sigpipe_script_fails_bare_and_wrapped_alike(tmp_path, hook_venv):
    """The issue's case: under slurmd, seq gets EPIPE (SIGPIPE ignored) and exits 1."""
    body = "#!/bin/bash\nset -o pipefail\nseq 1 1000000 | head -1 >/dev/null\n"
    bare = tmp_path / "bare" / "10-pipe"
    bare.parent.mkdir()
    bare.write_text(body)
    bare.chmod(0o755)
    d = tmp_path / "wrapped"
    d.mkdir()
    (d / "10-pipe").write_text(body)
    (d / "10-pipe").chmod(0o755)
    env = [b"HOOKSCOPE_CONFIG=" + os.fsencode(_config(tmp_path, d)), b"SLURM_SCRIPT_CONTEXT=prolog_slurmd",
           b"PATH=/usr/bin:/bin"]
    head_b, _ = _slurmd(bare, env, tmp_path, tmp_path)
    head_h, _ = _slurmd(hook_venv, env, tmp_path, tmp_path)
    assert head_b == "status=256 timed_out=0"
    assert head_h == head_b


@pytest.mark.parametrize("sig", ["TERM", "KILL", "HUP"])
def test_signal_death_reaches_slurmd_as_a_signal(tmp_path, hook_venv, sig):
    """slurmd logs "killed by signal N" for the bare script; so it must for the wrapper."""
    d = tmp_path / "wrapped"
    d.mkdir()
    (d / "10-sig").write_text(f"#!/bin/sh\nkill -{sig} $$\n")
    (d / "10-sig").chmod(0o755)
    env = [b"HOOKSCOPE_CONFIG=" + os.fsencode(_config(tmp_path, d)), b"SLURM_SCRIPT_CONTEXT=prolog_slurmd"]
    head_h, _ = _slurmd(hook_venv, env, tmp_path, tmp_path)
    head_b, _ = _slurmd(d / "10-sig", env, tmp_path, tmp_path)
    assert head_b == f"status={getattr(signal, 'SIG' + sig)} timed_out=0" and head_h == head_b


def test_leaked_fds_of_the_runner_do_not_reach_the_script(tmp_path):
    """slurmd closes fds >= 3 in every child: whatever the runner inherited, scripts get none."""
    d = tmp_path / "d"
    _probe_dir(d, tmp_path / "out")
    leak = os.open("/dev/null", os.O_RDONLY)
    try:
        os.set_inheritable(leak, True)
        env = dict(os.environ, HOOKSCOPE_CONFIG=str(_config(tmp_path, d)), SLURM_SCRIPT_CONTEXT="prolog_slurmd")
        r = subprocess.run([sys.executable, "-c", "import sys; from emitter.hook import main; sys.exit(main())"],
                           cwd=ROOT, env=env, pass_fds=(leak,), capture_output=True)
    finally:
        os.close(leak)
    assert r.returncode == 0, r.stderr
    state, _ = _state(tmp_path / "out")
    assert [ln.split(" ->")[0] for ln in state.splitlines() if ln.startswith("fd ")] == ["fd 0", "fd 1", "fd 2"]


def test_run_parts_layout_matches_debian_run_parts(tmp_path, hook_venv):
    """run-parts --exit-on-error vs hookscope run --layout run-parts, both as slurmd's command:
    umask 022, the runner's own group, stdin and fds, SIGCHLD unblocked, the env as is."""
    run_parts = "/usr/bin/run-parts"
    if not os.path.exists(run_parts):
        pytest.skip("Debian's run-parts is not installed (apt-get install debianutils)")
    bare_dir, hook_dir = tmp_path / "bare", tmp_path / "wrapped"
    _probe_dir(bare_dir, tmp_path / "out-bare")
    _probe_dir(hook_dir, tmp_path / "out-hook")
    for d in (bare_dir, hook_dir):  # a failing part: run-parts' own stderr line, exit 1
        (d / "60-fail").write_text("#!/bin/sh\necho failing\nexit 3\n")
        (d / "60-fail").chmod(0o755)
    env = ENV_BLOCK + [b"HOOKSCOPE_CONFIG=" + os.fsencode(_config(tmp_path, hook_dir))]
    head_b, out_b = _slurmd(run_parts, env, tmp_path, tmp_path, args=["--exit-on-error", str(bare_dir)])
    cli = hook_venv.with_name("hookscope")
    head_h, out_h = _slurmd(cli, env, tmp_path, tmp_path, args=[
        "run", "--layout", "run-parts", "--context", "prolog_slurmd", "--dir", str(hook_dir),
        "--journal", str(tmp_path / "j")])
    assert head_b == "status=256 timed_out=0" and head_h == head_b, (out_b, out_h)
    assert out_h.replace(os.fsencode(hook_dir), os.fsencode(bare_dir)) == out_b
    assert b"run-parts: " + os.fsencode(bare_dir) + b"/60-fail exited with return code 3\n" in out_b
    state_b, env_b = _state(tmp_path / "out-bare")
    state_h, env_h = _state(tmp_path / "out-hook")
    assert state_h.replace(str(hook_dir), str(bare_dir)) == state_b
    assert "Umask:\t0022" in state_b and "pgrp: other" in state_b
    assert env_h == env_b
