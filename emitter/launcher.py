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

``install`` also writes ``VENV/lib/hookscope-hot.marshal``: the code of the
modules a clean hook imports (``HOT_MODULES``), compiled by the venv's Python
into one file, which both launchers load before anything else (``_LOAD_HOT``:
about 0.8 ms of CPU less than finding and loading twelve modules and five C
extensions one by one; docs/runner.md "Third pass").  Each module's source is
checked against the size and mtime it was compiled from; any doubt (another
Python, an edited or missing source, an error) falls back to the normal imports.

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

#: The emitter modules a clean hook imports, each after every emitter module
#: its body imports (the order their bodies complete in a normal import; tests
#: check both).  Left out: emitter.journal_files (the spool's eviction scan is
#: due once per 5 s per node, not per hook) and emitter.userspool (only the
#: hooks that run as the job's user, TaskProlog and srun's, need it).
HOT_MODULES = ("emitter", "emitter.process", "emitter.hook", "emitter.contract", "emitter.configcache",
               "emitter.config", "emitter.journal_chain", "emitter.journal", "emitter.trust", "emitter.layouts",
               "emitter.pump", "emitter.runner")
#: The stdlib C extension modules the hot modules import.  Where they are shared
#: libraries (not built into the interpreter), the bundle names each file, so
#: that it is loaded without searching sys.path for it; _sha2 is 3.12's name
#: for _sha256.
HOT_EXTENSIONS = ("_sha256", "_sha2", "_json", "select", "fcntl", "_posixsubprocess")
#: Where ``install`` writes the hot modules' code, relative to the venv.
BUNDLE = os.path.join("lib", "hookscope-hot.marshal")

#: The bundle's loader, compiled by ``bundle`` and run by ``_LOAD_HOT`` with the
#: globals ``sys`` and ``MODS`` (the bundle's entries): it loads the extension
#: modules with importlib's own loader, then executes the modules into
#: sys.modules in HOT_MODULES order, as importlib would (``__file__``,
#: ``__package__``, the package's ``__path__``, each module an attribute of its
#: package), without a path search, stat, open and read per module.  Only
#: builtin and already loaded modules.  Any doubt: nothing loaded, normal imports.
_LOADER = """
import posix


def _load(mods):
    try:
        for name, file, mtime, size, code in mods:
            st = posix.stat(file)
            if st.st_mtime_ns != mtime or st.st_size != size or name in sys.modules:
                return
    except Exception:
        return
    done = []
    try:
        for name, file, mtime, size, code in mods:
            if code is None:  # an extension module: importlib's loader, minus the search
                bs, ext = sys.modules["_frozen_importlib"], sys.modules["_frozen_importlib_external"]
                spec = bs.spec_from_loader(name, ext.ExtensionFileLoader(name, file))
                m = bs.module_from_spec(spec)
                sys.modules[name] = m
                done.append(name)
                spec.loader.exec_module(m)
                continue
            m = type(sys)(name)
            m.__file__ = file
            pkg, _, leaf = name.rpartition(".")
            if pkg:
                m.__package__ = pkg
            else:
                m.__package__, m.__path__ = name, [file.rpartition("/")[0]]
            sys.modules[name] = m
            done.append(name)
            exec(code, m.__dict__)
            if pkg:
                setattr(sys.modules[pkg], leaf, m)
    except Exception:
        for name in done:
            sys.modules.pop(name, None)


_load(MODS)
"""

#: Runs first in both lean launchers (``{bundle}`` filled in by ``render``).
#: Short, because the -c text is compiled on every hook (compiling the loader
#: itself would cost most of what the bundle saves): the loader comes compiled,
#: in the bundle.  A bundle from another Python (its header), torn or
#: unreadable: normal imports.  It is read with one read of its own size (a
#: read into a 16 MiB buffer cost 0.2 ms more).
_LOAD_HOT = r"""import marshal, posix
try:
    _f = posix.open({bundle!r}, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        _d = posix.read(_f, posix.fstat(_f).st_size)
    finally:
        posix.close(_f)
    _h = b"hookscope-hot %08x\n" % sys.hexversion
    if _d.startswith(_h):
        _c, _m = marshal.loads(_d[len(_h):])
        exec(_c, {{"sys": sys, "MODS": _m}})
except Exception:
    pass
_d = _c = _m = None
"""

_HOOK_PY = (_NO_GC + "import sys; sys.path.insert(0, {root!r})\n" + _LOAD_HOT + "from emitter import process; "
            "process.LAUNCHED = sys.argv[1:4]; del sys.argv[1:4]; from emitter.hook import main, exit_now; "
            "exit_now(main())")

HOOK_TEMPLATE = """#!/bin/sh
# hookscope lean launcher (python -m emitter.launcher install; docs/runner.md).
{read_masks}
{python} -IS -c {code} "$i" "$b" "$$"
exit $?
"""

_CLI_LEAN_PY = (_NO_GC + "import sys; sys.path.insert(0, {root!r})\n" + _LOAD_HOT + "from emitter import process; "
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
        root = _root()
    bundle = os.path.join(venv, BUNDLE)
    return {
        "hookscope-hook": HOOK_TEMPLATE.format(python=_q(python), read_masks=_READ_MASKS,
                                               code=_q(_HOOK_PY.format(root=root, bundle=bundle))),
        "hookscope": CLI_TEMPLATE.format(
            python=_q(python), read_masks=_READ_MASKS, lean=_q(_CLI_LEAN_PY.format(root=root, bundle=bundle)),
            full=_q(_CLI_FULL_PY.format(root=root, site_dirs=_site_dirs(venv)))),
    }


def _root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source(root, name):
    path = os.path.join(root, *name.split("."))
    return os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"


def _extensions(names):
    """(name, file) of each of ``names`` that this Python loads from a shared library."""
    import importlib.machinery
    import importlib.util

    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            out.append((name, spec.origin))
    return out


def bundle(root=None, modules=HOT_MODULES, extensions=HOT_EXTENSIONS):
    """The bytes of the hot bundle: a header naming this Python's exact version,
    then, marshalled, the compiled ``_LOADER`` and (name, path, its mtime_ns and
    size, code) per module: the extension modules first (code None), then
    ``modules``.  Each source is stat'ed before it is read, so a source that
    changes meanwhile fails the loader's check instead of passing it."""
    import marshal

    root = _root() if root is None else os.path.abspath(root)
    mods = []
    for name, path in _extensions(extensions):
        st = os.stat(path)
        mods.append((name, path, st.st_mtime_ns, st.st_size, None))
    for name in modules:
        path = _source(root, name)
        st = os.stat(path)
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
        mods.append((name, path, st.st_mtime_ns, st.st_size, code))
    loader = compile(_LOADER, "<hookscope-hot loader>", "exec", dont_inherit=True)
    return b"hookscope-hot %08x\n" % sys.hexversion + marshal.dumps((loader, tuple(mods)))


def write_bundle(venv, root=None):
    """Compile the hot bundle with the venv's own Python (the one the launchers
    run) into VENV/BUNDLE; returns its path, or None (and no bundle: the
    launchers then import normally) if that Python could not build it."""
    import subprocess

    venv = os.path.abspath(venv)
    root = _root() if root is None else root
    path = os.path.join(venv, BUNDLE)
    code = (f"import sys; sys.path.insert(0, {root!r}); from emitter.launcher import bundle; "
            f"sys.stdout.buffer.write(bundle({root!r}))")
    try:
        out = subprocess.run([os.path.join(venv, "bin", "python"), "-IS", "-c", code], capture_output=True,
                             check=True, timeout=120).stdout
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"launcher: no hot bundle in {path} ({exc}); the launchers import normally\n")
        try:
            os.unlink(path)
        except OSError:
            pass
        return None


def install(venv):
    bindir = os.path.join(os.path.abspath(venv), "bin")
    if not os.path.isfile(os.path.join(bindir, "python")):
        raise SystemExit(f"launcher: {bindir}/python not found; pass the virtual environment directory")
    written = [p for p in (write_bundle(venv),) if p]
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
