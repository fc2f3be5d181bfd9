"""``hookscope exec [OPTIONS] -- SCRIPT [ARGS]``: one script, run as its caller would have.

For platforms whose own dispatcher picks the scripts (DeepOps' ``epilog.sh``
with its ``lastuserjob`` filters, SUNK's ``run-parts.sh``): the dispatcher
keeps every decision and calls ``hookscope exec -- /etc/slurm/epilog.d/x``
where it called ``x``.  The script gets its arguments, the runner's own stdin,
fds, process group and process state (the runner's ``exec`` layout: the
process layer starts it in the runner's place), its output goes through
unchanged, and the caller gets its status: an exit code as is, a death by
signal as the same signal (the runner re-raises it on itself, so a shell sees
128+N and a C caller sees WIFSIGNALED).  The run is journaled as one hook of
one script.

Stdlib only, and the same fast option parser as ``hookscope run``.
"""

import os
import sys

from emitter import runcli

_EXEC_OPTS = {
    "--context": ("context", "str", "hook context (default: $SLURM_SCRIPT_CONTEXT)"),
    "--config": ("config", "str", "config file (default: $HOOKSCOPE_CONFIG, /etc/hookscope/hookscope.toml)"),
    "--journal": runcli._RUN_ONLY["--journal"],
    "--timeout": runcli._RUN_ONLY["--timeout"],
    "--node": runcli._RUN_ONLY["--node"],
    "--cluster": runcli._RUN_ONLY["--cluster"],
    "--output-on": runcli._RUN_ONLY["--output-on"],
    "--no-fsync": runcli._RUN_ONLY["--no-fsync"],
}
EXEC_EXAMPLE = ("Example (in DeepOps' epilog.sh, where it ran the part itself):\n"
                "  hookscope exec --context epilog_slurmd -- /etc/slurm/epilog.d/50-lastuserjob-processes\n\n"
                "Exit status: the script's own (a script killed by signal N kills hookscope exec with N).\n\n"
                + runcli._ENV_HELP
                + "  HOOKSCOPE_JOURNAL_DIR  journal directory (--journal); 'hookscope agent' reads it too\n"
                "  SLURMD_NODENAME        node name in records (--node); slurmd sets it")


def split_argv(argv):
    """(options, [SCRIPT, ARGS...]): options end at ``--`` or at the first non-option."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    opts, i = [], 0
    while i < len(argv) and argv[i].startswith("-"):
        name = argv[i].partition("=")[0]
        takes = name in _EXEC_OPTS and _EXEC_OPTS[name][1] not in ("true", "false") and "=" not in argv[i]
        opts += argv[i:i + 1 + takes]
        i += 1 + takes
    return opts, argv[i:]


def exec_main(argv):
    prog = "hookscope exec [OPTIONS] -- SCRIPT [ARGS]"
    opt_args, command = split_argv(argv)
    if any(a in ("-h", "--help") for a in opt_args):
        return runcli._parse(prog, _EXEC_OPTS, EXEC_EXAMPLE, ["--help"])[1]
    if not command:
        sys.stderr.write(f"usage: {prog}\nhookscope exec: no script given\n")
        return 2
    opts, code = runcli._parse(prog, _EXEC_OPTS, EXEC_EXAMPLE, opt_args)
    if opts is None:
        return code
    from emitter import EmitterError
    from emitter.journal import ensure_std_fds

    ensure_std_fds()
    script = command[0]
    forced = {"dirs": [script], "layout": "exec", "passthrough": True}
    try:
        settings, context, _, _ = runcli.resolve({**opts, **forced}, require_context=False)
    except EmitterError as exc:
        if getattr(exc, "path", None) == "<arguments>":
            sys.stderr.write(f"hookscope exec: {exc}\n")
            return 2
        # Our config must not change the caller's outcome: keep what is valid of it, as hookscope-hook does.
        from emitter import config as cf

        note = "" if isinstance(exc, cf.UntrustedError) else " -- ignoring what is invalid until it is fixed"
        sys.stderr.write(f"hookscope exec: {exc}{note}\n")
        over = {k: v for k, v in opts.items() if k not in ("config", "context")}
        over.update(layout="exec", passthrough=True)
        from emitter.configsalvage import salvage_config

        # The same resolver on what is valid of the file; the arguments are not checked again: the
        # script runs whatever our settings say (runner_settings still refuses an unknown key).
        settings = cf.RunnerSettings.resolve(salvage_config(opts.get("config")), validate_args=False, **over)
        context = opts.get("context")
    ended, status = run_one(settings, context or os.environ.get("SLURM_SCRIPT_CONTEXT") or "", command)
    sig = ended.get("signal") if ended else None
    if sig:
        _die_by(sig)
    return status


def run_one(settings, context, command):
    """Plan and run ``command`` (a script and its arguments) as a hook of one
    script; returns (script_ended fields or None, status)."""
    from emitter import contract as c
    from emitter import layouts, runner
    from emitter.config import strict_enabled

    knobs = layouts.knobs_for("exec")
    strict = strict_enabled(settings["strict"])
    entries, warnings = layouts.plan([command[0]], knobs, strict=strict)
    for e in entries:
        e.argv = list(command)

    class _ExecRunner(runner.Runner):
        ended = None

        def _j(self, kind, fields):
            if kind == c.K_SCRIPT_ENDED:
                _ExecRunner.ended = fields
            super()._j(kind, fields)

    journal = runner.open_journal(settings) if hasattr(runner, "open_journal") else _journal(settings)
    r = _ExecRunner(settings, context, [command[0]], knobs, strict, journal=journal, env=None)
    _as_if_run_directly(r, command[0])
    try:
        status = r.run(entries, warnings)
    finally:
        try:
            journal.close()
        except Exception:  # noqa: BLE001 - the status is already decided
            pass
    return _ExecRunner.ended, status


def _own_paths():
    """Real paths a caller's shell may have named when it started this process:
    the interpreter, and the script it runs (the lean launcher, pip's wrapper)."""
    from emitter import process

    out = set()
    pids = ["self"]
    if process.LAUNCHED:
        pids.append(process.LAUNCHED[2])
    for pid in pids:
        try:
            out.add(os.path.realpath(f"/proc/{pid}/exe"))
        except OSError:
            pass
        argv = process._read(f"/proc/{pid}/cmdline", 8192).split(b"\0")
        if len(argv) > 1 and argv[1].startswith(b"/"):
            out.add(os.path.realpath(os.fsdecode(argv[1])))
    out.add(os.path.realpath(sys.executable))
    return out


def _as_if_run_directly(r, script):
    """bash puts the path of the command it runs in that command's environment
    as ``_``: a dispatcher running ``hookscope exec -- PART`` hands us
    ``_=/path/to/hookscope`` where PART alone would have had ``_=PART``.  So
    when the first ``_`` names this process, the script gets the path as the
    shell would have set it; any other ``_`` (dash sets none) passes unchanged."""
    items = list(r._block) if r._block is not None else [k + b"=" + v for k, v in r.child_env.items()]
    for i, item in enumerate(items):
        if not item.startswith(b"_="):
            continue
        try:
            mine = os.path.realpath(os.fsdecode(item[2:])) in _own_paths()
        except (OSError, ValueError):
            mine = False
        if mine:
            new = os.fsencode(script if "/" in script else _which(script, r.child_env.get(b"PATH")))
            items[i] = b"_=" + new
            r.child_env[b"_"] = new
            if r._block is not None:
                r._block = items
        return


def _which(name, path):
    for d in (path or b"").split(b":"):
        cand = os.path.join(os.fsdecode(d) or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return name


def _journal(settings):
    from emitter import runner
    from emitter.journal import Journal, say

    try:
        return Journal(settings["journal_dir"], node=settings["node"] or None,
                       cluster=settings["cluster"] or os.environ.get("SLURM_CLUSTER_NAME", ""),
                       fsync=settings["fsync"], spool_max_bytes=settings["spool_max_bytes"])
    except Exception as exc:  # noqa: BLE001 - run unrecorded rather than not at all
        say(f"hookscope exec: journal disabled for this run ({type(exc).__name__}: {exc}); the script still runs\n")
        return runner._NoJournal()


def _die_by(sig):
    """End this process by ``sig``, so the caller's wait() sees what the script's
    would have.  Through the lean launcher Python is the shell's child, so the
    shell is the one signalled (emitter.process.die_by)."""
    from emitter.process import die_by

    sys.stdout.flush()
    sys.stderr.flush()
    die_by(sig)


# ---------------------------------------------------------------- run-parts
RUN_PARTS_EXAMPLE = ("Example (SUNK's run-parts.sh, or any script that called run-parts):\n"
                     "  hookscope run-parts --exit-on-error /etc/slurm/prolog.d\n\n"
                     "Options as Debian's run-parts: --exit-on-error, --regex=RE, -a/--arg=ARG, "
                     "-u/--umask=UMASK, --reverse, --list, --test; and hookscope's --context, --config, "
                     "--journal.  Exit status as run-parts: 1 if a part failed, 0 otherwise.\n\n"
                     + runcli._ENV_HELP
                     + "  HOOKSCOPE_JOURNAL_DIR  journal directory (--journal); 'hookscope agent' reads it too")
_RP_VALUE = {"--regex": "regex", "--arg": "arg", "-a": "arg", "--umask": "umask", "-u": "umask",
             "--context": "context", "--config": "config", "--journal": "journal_dir"}
_RP_FLAG = {"--exit-on-error": "exit_on_error", "--reverse": "reverse", "--list": "list", "--test": "test"}


def parse_run_parts(argv):
    """(options, directory) from run-parts style arguments; ValueError with a message on misuse."""
    o = {"arg": []}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if a == "--":
            rest += argv[i + 1:]
            break
        if name in _RP_FLAG and not eq:
            o[_RP_FLAG[name]] = True
        elif name in _RP_VALUE:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise ValueError(f"option {a} needs a value")
                val = argv[i]
            key = _RP_VALUE[name]
            if key == "arg":
                o["arg"].append(val)
            else:
                o[key] = val
        elif a.startswith("-") and a != "-":
            raise ValueError(f"unsupported option {a}")
        else:
            rest.append(a)
        i += 1
    if len(rest) != 1:
        raise ValueError("exactly one directory is required")
    if "umask" in o:
        try:
            o["umask"] = int(o["umask"], 8)
            if not 0 <= o["umask"] <= 0o777:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad umask {o['umask']!r}") from None
    return o, rest[0]


def run_parts_main(argv):
    """``hookscope run-parts [OPTIONS] DIR``: Debian run-parts' semantics, every part journaled."""
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(f"usage: hookscope run-parts [OPTIONS] DIRECTORY\n\n{RUN_PARTS_EXAMPLE}\n")
        return 0
    try:
        o, directory = parse_run_parts(list(argv))
    except ValueError as exc:
        sys.stderr.write(f"hookscope run-parts: {exc}\n")
        return 1  # run-parts' own status for a usage error
    from emitter import EmitterError, layouts, runner
    from emitter.config import strict_enabled
    from emitter.journal import ensure_std_fds

    ensure_std_fds()
    opts = {k: o[k] for k in ("context", "config", "journal_dir") if k in o}
    try:
        settings, context, _, _ = runcli.resolve({**opts, "dirs": [directory], "layout": "run-parts"},
                                                 require_context=False)
        knobs = layouts.knobs_for("run-parts", keep_going=not o.get("exit_on_error"),
                                  name_filter=o.get("regex"), order="reverse" if o.get("reverse") else None)
    except (EmitterError, layouts.LayoutError) as exc:
        sys.stderr.write(f"hookscope run-parts: {exc}\n")
        return 1
    if "umask" in o:
        knobs["umask"] = o["umask"]
    entries, warnings = layouts.plan([directory], knobs, strict=strict_enabled(settings["strict"]))
    if o.get("list") or o.get("test"):
        return _list(entries, o)
    for e in entries:
        e.argv = [e.path, *o["arg"]]
    journal = _journal(settings)
    r = runner.Runner(settings, context or os.environ.get("SLURM_SCRIPT_CONTEXT") or "", [directory], knobs,
                      strict_enabled(settings["strict"]), journal=journal, env=None)
    try:
        return r.run(entries, warnings)
    finally:
        try:
            journal.close()
        except Exception:  # noqa: BLE001 - the status is already decided
            pass


def _list(entries, o):
    """--list: every file whose name passes (executable or not); --test: what would run."""
    import stat

    from emitter import layouts

    for e in entries:
        if e.reason and "name filter" in e.reason:
            continue
        if e.st is None:  # a dangling symlink: run-parts' "failed to stat component"
            sys.stdout.flush()
            sys.stderr.write(f"run-parts: {e.reason.split(' (run-parts', 1)[0]}\n")
            if o.get("exit_on_error"):
                return 1
            continue
        if stat.S_ISDIR(e.st.st_mode) or (o.get("test") and e.action != layouts.RUN):
            continue
        sys.stdout.write(e.path + "\n")
    return 0

