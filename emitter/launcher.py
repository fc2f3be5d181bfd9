"""Lean console-script launchers for the hook's hot path.

pip's generated ``bin/hookscope-hook`` starts Python with ``site`` (every
``.pth`` file in the venv, the editable-install finder) and imports ``re``
before calling ``main``: several milliseconds on every job's every hook.
``python -m emitter.launcher install VENV`` replaces ``hookscope-hook`` and
``hookscope`` with launchers that start ``python -I -S`` (isolated, no
``site``) and put only the directory holding ``emitter`` on ``sys.path``.
``hookscope`` keeps the lean path for ``run``/``plan``/``exec`` and loads the
venv's site-packages (with its ``.pth`` files) for every other subcommand.

The launchers are ``/bin/sh`` scripts, because CPython changes its signal
dispositions before any Python code runs (it ignores SIGPIPE and SIGXFSZ), so
only a process that runs first can see what slurmd gave: the shell reads
``SigIgn``/``SigBlk`` from /proc/self/status with builtins only (no fork),
and passes them, with its own PID, as Python's first arguments
(emitter/process.py says which bits it trusts from the shell: dash and bash
each change some signal state of their own).  Python runs
as the shell's child, not by ``exec``: a shell rebuilds the environment it
passes on (dash reorders it, drops names it cannot hold, adds PWD), so the
runner reads the environment slurmd gave from the waiting shell's
/proc/PID/environ, byte for byte.  Nothing is added to any environment.

Re-run after moving the checkout or recreating the venv (``make`` does).
"""

import os
import sys

#: Reads the masks as exec'd; "read" is a builtin, so nothing forks.
_READ_MASKS = ("while read -r k v; do case $k in SigBlk:) b=$v;; SigIgn:) i=$v; break;; esac; "
               "done </proc/self/status")

#: The cyclic garbage collector is off for the hook's life (``gc.disable()``):
#: a hook creates no reference cycles per script (tests/runner/test_runner.py
#: checks), and the collections that the imports trigger cost 0.3-0.4 ms of CPU
#: (bench_runner.py --profile; docs/runner.md "Speed").  The process ends by os._exit.
_NO_GC = "import gc; gc.disable(); "

_HOOK_PY = (_NO_GC + "import sys; sys.path.insert(0, {root!r}); from emitter import process; "
            "process.LAUNCHED = sys.argv[1:4]; del sys.argv[1:4]; from emitter.hook import main, exit_now; "
            "exit_now(main())")

HOOK_TEMPLATE = """#!/bin/sh
# hookscope lean launcher (python -m emitter.launcher install; docs/runner.md).
{read_masks}
{python} -IS -c {code} "$i" "$b" "$$"
exit $?
"""

_CLI_LEAN_PY = (_NO_GC + "import sys; sys.path.insert(0, {root!r}); from emitter import process; "
                "process.LAUNCHED = sys.argv[1:4]; del sys.argv[1:4]; sys.argv[0] = 'hookscope'; "
                "from emitter.cli import main; from emitter.hook import exit_now; exit_now(main())")
_CLI_FULL_PY = ("import sys; sys.path.insert(0, {root!r}); import site; "
                "[site.addsitedir(p) for p in {site_dirs!r}]; sys.argv[0] = 'hookscope'; "
                "from emitter.cli import main; sys.exit(main())")

CLI_TEMPLATE = """#!/bin/sh
# hookscope lean launcher (python -m emitter.launcher install): run/plan/exec skip site.
case $1 in
run|plan|exec)
  {read_masks}
  {python} -IS -c {lean} "$i" "$b" "$$" "$@"
  exit $? ;;
*)
  exec {python} -IS -c {full} "$@" ;;
esac
"""


def _q(text):
    """Single-quoted for /bin/sh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _site_dirs(venv):
    import glob

    return sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages")))


def render(venv, root=None):
    """{script name: text} for ``venv``.  Pure given the paths."""
    venv = os.path.abspath(venv)
    python = os.path.join(venv, "bin", "python")
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {
        "hookscope-hook": HOOK_TEMPLATE.format(python=_q(python), read_masks=_READ_MASKS,
                                               code=_q(_HOOK_PY.format(root=root))),
        "hookscope": CLI_TEMPLATE.format(
            python=_q(python), read_masks=_READ_MASKS, lean=_q(_CLI_LEAN_PY.format(root=root)),
            full=_q(_CLI_FULL_PY.format(root=root, site_dirs=_site_dirs(venv)))),
    }


def install(venv):
    bindir = os.path.join(os.path.abspath(venv), "bin")
    if not os.path.isfile(os.path.join(bindir, "python")):
        raise SystemExit(f"launcher: {bindir}/python not found; pass the virtual environment directory")
    written = []
    for name, text in render(venv).items():
        path = os.path.join(bindir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "install":
        sys.stderr.write("usage: python -m emitter.launcher install VENV\n"
                         "Example:\n  python -m emitter.launcher install .venv\n")
        return 2
    for p in install(argv[1]):
        print(f"launcher: wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
