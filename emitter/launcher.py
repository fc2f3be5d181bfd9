"""Lean console-script launchers for the hook's hot path.

pip's generated ``bin/hookscope-hook`` starts Python with ``site`` (every
``.pth`` file in the venv, the editable-install finder) and imports ``re``
before calling ``main``: several milliseconds on every job's every hook.
``python -m emitter.launcher install VENV`` replaces ``hookscope-hook`` and
``hookscope`` with launchers that start ``python -I -S`` (isolated, no
``site``) and put only the directory holding ``emitter`` on ``sys.path``.
``hookscope`` keeps the lean path for ``run``/``plan`` and loads the venv's
site-packages (with its ``.pth`` files) for every other subcommand.

Re-run after moving the checkout or recreating the venv (``make`` does).
"""

import os
import sys

HOOK_TEMPLATE = """#!{python} -IS
# hookscope lean launcher (python -m emitter.launcher install): no site, no re.
import sys
sys.path.insert(0, {root!r})
from emitter.hook import main
sys.exit(main())
"""

CLI_TEMPLATE = """#!{python} -IS
# hookscope lean launcher (python -m emitter.launcher install): run/plan skip site.
import sys
sys.path.insert(0, {root!r})
if len(sys.argv) < 2 or sys.argv[1] not in ("run", "plan"):
    import site
    for _p in {site_dirs!r}:
        site.addsitedir(_p)
from emitter.cli import main
sys.exit(main())
"""


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
        "hookscope-hook": HOOK_TEMPLATE.format(python=python, root=root),
        "hookscope": CLI_TEMPLATE.format(python=python, root=root, site_dirs=_site_dirs(venv)),
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
