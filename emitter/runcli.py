"""``hookscope run`` and ``hookscope plan``: plain ``main(argv) -> int``.

Stdlib only.  A small table-driven parser handles the options on the hot path
(argparse alone costs ~5 ms at start-up, as much as a no-op hook); ``--help``
and any mistake go to an argparse parser built from the same table, so the
help text and the errors are argparse's.
"""

import os
import sys

from emitter import contract as c

# option -> (settings key or special, kind, help).  kind: str|float|int|list|true|false
_COMMON = {
    "--layout": ("layout", "str", "layout preset: slurm (default), slinky, run-parts, tensorwave"),
    "--dir": ("dirs", "list", "hook directory or script (repeatable; default: [runner.dirs] of the context)"),
    "--context": ("context", "str", "hook context (default: $SLURM_SCRIPT_CONTEXT)"),
    "--config": ("config", "str", "config file (default: $HOOKSCOPE_CONFIG, /etc/hookscope/hookscope.toml)"),
    "--keep-going": ("keep_going", "true", "run-parts layout: run every script, exit 1 if any failed"),
    "--empty-ok": ("empty_ok", "true", "an empty hook directory succeeds, with a warning"),
    "--strict": ("strict", "true", "refuse (126) scripts another user owns or can write, or reached through "
                                   "such a directory (default: run them as slurmd would and record a finding)"),
    "--no-strict": ("strict", "false", "do not check script permissions at all"),
    "--order": ("order", "str", "knob: reverse or ascending"),
    "--non-executable": ("non_executable", "str", "knob: fail, skip or skip_warn"),
    "--require-shebang": ("require_shebang", "true", "knob: refuse scripts without a #! line"),
    "--no-require-shebang": ("require_shebang", "false", "knob: accept scripts without a #! line"),
    "--stop-on-failure": ("stop_on_failure", "true", "knob: stop at the first failing script"),
    "--no-stop-on-failure": ("stop_on_failure", "false", "knob: run every script"),
    "--name-filter": ("name_filter", "str", "knob: glob, run-parts, none, or a regular expression"),
    "--empty": ("empty", "str", "knob: fail or ok"),
}
_RUN_ONLY = {
    "--journal": ("journal_dir", "str", f"journal directory (default: $HOOKSCOPE_JOURNAL_DIR, config, "
                                        f"{c.JOURNAL_DIR_DEFAULT})"),
    "--timeout": ("timeout_s", "float", "per-script budget in seconds (0 = none), as slurmd gives each script "
                                        "the full PrologEpilogTimeout; 'hookscope plan' prints the slurm.conf "
                                        "value the wrapper then needs"),
    "--kill-grace": ("kill_grace_s", "float", "seconds from SIGTERM to SIGKILL when the budget expires"),
    "--output-bytes": ("output_bytes", "int", "tail of output kept per script"),
    "--output-on": ("output_on", "str", "store output on: failure (default), always, never"),
    "--log-file": ("log_file", "str", "per-node log file ({node} expands); tensorwave has a default"),
    "--node": ("node", "str", "node name in records"),
    "--cluster": ("cluster", "str", "cluster name in records"),
    "--no-fsync": ("fsync", "false", "skip the one fdatasync at hook end"),
    "--no-passthrough": ("passthrough", "false", "do not copy script output to stdout (TaskProlog stdout always is)"),
    "--export": ("export", "str", "after the hook: none (default) or direct (ship it now)"),
    "--export-deadline": ("export_deadline_s", "float", "deadline of --export direct, seconds (default 0.3)"),
}
_RUN_OPTS = {**_COMMON, **_RUN_ONLY}

#: the environment variables run/plan read (an option wins over its variable)
_ENV_HELP = ("Environment:\n"
             "  HOOKSCOPE_CONFIG       config file (--config)\n"
             "  SLURM_SCRIPT_CONTEXT   hook context (--context); slurmd sets it\n")
RUN_EXAMPLE = ("Example:\n  hookscope run --context prolog_slurmd --dir /etc/slurm/prolog.d "
               "--journal /tmp/j --timeout 30\n\n" + _ENV_HELP +
               "  HOOKSCOPE_JOURNAL_DIR  journal directory (--journal); 'hookscope agent' reads it too\n"
               "  SLURMD_NODENAME        node name in records (--node); slurmd sets it")
PLAN_EXAMPLE = ("Example:\n  hookscope plan --context prolog_slurmd --slurm-conf /etc/slurm/slurm.conf\n\n"
                "Exit status 1 when slurm.conf's timeout would cut off a run that bare slurmd would finish.\n\n"
                + _ENV_HELP + "  SLURM_CONF             slurm.conf to check (--slurm-conf)")
_PLAN_OPTS = {
    **_COMMON,
    "--slurm-conf": ("slurm_conf", "str", "slurm.conf whose timeout to check (default: $SLURM_CONF, "
                                          "/etc/slurm/slurm.conf when it exists)"),
    "--timeout": _RUN_ONLY["--timeout"],
    "--from-slurm-conf": ("from_slurm_conf", "true", "plan the context's own slurm.conf lines (Prolog=/dir/*, "
                                                      "several lines on 24.05+) as bare slurmd runs them"),
}


class _Usage(Exception):
    pass


def _fast_parse(argv, table):
    out = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if name not in table:
            raise _Usage(a)
        key, kind, _ = table[name]
        if kind in ("true", "false"):
            if eq:
                raise _Usage(a)
            out[key] = kind == "true"
            i += 1
            continue
        if not eq:
            i += 1
            if i >= len(argv):
                raise _Usage(a)
            val = argv[i]
        i += 1
        try:
            if kind == "float":
                val = float(val)
                if not val >= 0 or val == float("inf"):
                    raise ValueError
            elif kind == "int":
                val = int(val)
                if val < 0:
                    raise ValueError
        except ValueError:
            raise _Usage(a) from None
        if kind == "list":
            out.setdefault(key, []).append(val)
        else:
            out[key] = val
    return out


def _argparse(prog, table, example, argv):
    """Full argparse for --help and for errors (exits 0 or 2 like argparse)."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, epilog=example, formatter_class=argparse.RawDescriptionHelpFormatter)
    for opt, (key, kind, help_) in table.items():
        if kind in ("true", "false"):
            p.add_argument(opt, dest=key, action="store_const", const=kind == "true", help=help_)
        elif kind == "list":
            p.add_argument(opt, dest=key, action="append", metavar="DIR", help=help_)
        else:
            typ = {"float": float, "int": int}.get(kind, str)
            p.add_argument(opt, dest=key, type=typ, help=help_)
    p.parse_args(argv)
    return None


def _parse(prog, table, example, argv):
    if any(a in ("-h", "--help") for a in argv):
        try:
            _argparse(prog, table, example, ["--help"])
        except SystemExit as e:
            return None, e.code
    try:
        return _fast_parse(argv, table), None
    except _Usage:
        try:
            _argparse(prog, table, example, argv)
        except SystemExit as e:
            return None, e.code or 2
        sys.stderr.write(f"{prog}: invalid arguments {argv!r}\n")  # argparse accepted what we did not
        return None, 2


def resolve(opts, require_context=True):
    """(settings, context, dirs, cfg, config_warning) from parsed options.

    Order: option, then environment, then config file, then default.
    """
    from emitter.config import ConfigError, RunnerSettings, context_dirs, load_config

    cfg = load_config(opts.get("config"))
    context = opts.get("context") or os.environ.get("SLURM_SCRIPT_CONTEXT")
    if context is not None and context not in c.CONTEXTS:
        raise ConfigError("<arguments>", f"unknown context {context!r}",
                          f"use one of: {', '.join(c.CONTEXTS)}")
    overrides = {k: v for k, v in opts.items() if k not in ("config", "context", "dirs", "slurm_conf",
                                                            "from_slurm_conf")}
    settings = RunnerSettings.resolve(cfg, context=context, **overrides)
    dirs = opts.get("dirs")
    if not dirs:
        if context is None:
            if require_context:
                raise ConfigError("<arguments>", "no --dir and no context",
                                  "pass --dir DIR, or --context CTX (or set SLURM_SCRIPT_CONTEXT)")
            dirs = []
        else:
            dirs = context_dirs(settings, context)
    return settings, context, dirs, cfg


def export_direct(journal, settings, cfg):
    """--export direct: ship the hook file now; never changes the exit status."""
    from emitter.journal import say

    try:
        from emitter.direct import ship

        ship(journal_dir=journal.dir, hook_file=journal.path, deadline_s=float(settings["export_deadline_s"]),
             config=cfg)
    except BaseException as exc:  # noqa: BLE001 - the scripts' status wins, always
        say(f"hookscope: --export direct failed ({type(exc).__name__}: {exc}); "
                     f"{journal.path} stays in the spool for the agent\n")


def run_main(argv):
    opts, code = _parse("hookscope run", _RUN_OPTS, RUN_EXAMPLE, list(argv))
    if opts is None:
        return code
    from emitter import EmitterError
    from emitter import runner
    from emitter.journal import ensure_std_fds

    ensure_std_fds()
    try:
        settings, context, dirs, cfg = resolve(opts)
    except EmitterError as exc:
        sys.stderr.write(_visible(f"hookscope run: {exc}") + "\n")
        return 2
    ran = []
    status, journal = runner.run(settings, context or "", dirs, ran=ran,
                                 extra_warnings=cf_deprecations(cfg))
    if settings["export"] == "direct" and journal.problem is None:
        export_direct(journal, settings, cfg)
    sig = ran[0].status_signal if ran else None
    if sig is not None and status == 128 + sig:
        # As hookscope-hook: the bare script's death by a signal is what the caller would have seen.
        from emitter.process import die_by

        sys.stdout.flush()
        die_by(sig)
    return status


def cf_deprecations(cfg):
    from emitter.config import deprecations

    return deprecations(cfg)


def plan_main(argv):
    opts, code = _parse("hookscope plan", _PLAN_OPTS, PLAN_EXAMPLE, list(argv))
    if opts is None:
        return code
    from emitter import EmitterError, layouts
    from emitter.config import strict_enabled

    try:
        if opts.get("from_slurm_conf"):
            opts["dirs"] = _slurm_conf_dirs(opts)
        settings, context, dirs, plan_cfg = resolve(opts)
        knobs = layouts.knobs_for(settings["layout"], keep_going=settings["keep_going"],
                                  **{k: settings[k] for k in ("order", "stop_on_failure", "non_executable",
                                                              "require_shebang", "name_filter", "empty")})
        strict = strict_enabled(settings["strict"])
    except (EmitterError, layouts.LayoutError) as exc:
        sys.stderr.write(_visible(f"hookscope plan: {exc}") + "\n")
        return 2
    entries, warnings = layouts.plan(dirs, knobs, strict=strict)
    warnings = cf_deprecations(plan_cfg) + warnings
    sys.stdout.write(_visible(format_plan(settings["layout"], knobs, strict, context, dirs, entries, warnings),
                              keep_layout=True))
    lines, failed = slurm_conf_lines(opts.get("slurm_conf"), context, len(layouts.counted(entries)), settings)
    if lines is None:
        sys.stderr.write(f"hookscope plan: cannot read slurm.conf {opts.get('slurm_conf')}\n")
        return 2
    sys.stdout.write(_visible("".join(line + "\n" for line in lines), keep_layout=True))
    return 1 if failed else 0


def _slurm_conf_dirs(opts):
    """--from-slurm-conf: the context's hook lines of slurm.conf as directories."""
    from emitter import slurmconf
    from emitter.config import ConfigError

    path = opts.get("slurm_conf") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    context = opts.get("context") or os.environ.get("SLURM_SCRIPT_CONTEXT") or "prolog_slurmd"
    try:
        conf = slurmconf.read(path)
    except OSError as exc:
        raise ConfigError(path, f"cannot read slurm.conf ({exc.strerror})", "pass --slurm-conf PATH") from None
    key = slurmconf.CONTEXT_KEY.get(context)
    dirs, problems = slurmconf.glob_dirs(slurmconf.hook_values(conf, key) if key else [])
    if problems or not dirs:
        raise ConfigError(path, "; ".join(problems) or f"no {key}= line to plan (or only hookscope-hook)",
                          "pass --dir for what you want planned")
    return dirs


def slurm_conf_lines(path, context, n_scripts, settings):
    """(lines, failed): what slurm.conf's timeout means for this wrapped hook.

    (None, False) when an explicit ``path`` cannot be read; no lines when there is no slurm.conf.
    """
    from emitter import slurmconf

    if path is None:
        for cand in (os.environ.get("SLURM_CONF"), "/etc/slurm/slurm.conf"):
            if cand and os.path.exists(cand):
                path = cand
                break
        else:
            return [], False
    try:
        conf = slurmconf.read(path)
    except OSError:
        return None, False
    lines, failed = ["", f"slurm.conf {path}:"], False
    from emitter.process import KILL_AFTER_S  # the SIGTERM->SIGKILL gap kept per script (kill_grace_s: deprecated)

    v = slurmconf.timeout_verdict(conf, context or "prolog_slurmd", n_scripts, float(settings["timeout_s"] or 0),
                                  KILL_AFTER_S)
    if v is None:
        lines.append("  no hook timeout applies (slurmd waits for ever; so does hookscope)")
    else:
        status, msg, fix = v
        lines.append(f"  {status}: {msg}")
        if fix:
            lines.append(f"  fix: {fix}")
        failed = status == "FAIL"
    if "runinjob" in slurmconf.prolog_flags(conf):
        lines.append("  note: PrologFlags=RunInJob: the runner and its scripts run inside the job's cgroup")
    return lines, failed


def format_plan(layout, knobs, strict, context, dirs, entries, warnings):
    """The human-readable plan: run order first, then what is skipped or refused."""
    lines = [f"layout {layout}: order={knobs['order']} stop_on_failure={knobs['stop_on_failure']} "
             f"non_executable={knobs['non_executable']} require_shebang={knobs['require_shebang']} "
             f"name_filter={knobs['name_filter']} empty={knobs['empty']} failure_status={knobs['failure_status']} "
             f"strict={strict}",
             f"context {context or '-'}; directories: {', '.join(dirs) or '(none)'}"]
    if knobs["order"] == "reverse":
        lines.append("note: slurmd runs Prolog=/dir/* in REVERSE glob order: the LAST name runs FIRST")
    lines.append("")
    i = 0
    stopped = False
    for e in entries:
        if e.action == "skip":
            continue
        what = {"run": "run", "fail": "FAILS (127)", "refuse": "REFUSED (126)"}[e.action]
        lines.append(f"{i + 1:>3}. {what:<14} {e.path}" + (f"  -- {e.reason}" if e.reason else ""))
        i += 1
        if e.action != "run" and knobs["stop_on_failure"] and not stopped:
            stopped = True
            lines.append("     ^ the hook fails here and stops: nothing below runs")
    if i == 0:
        lines.append("  nothing would run: " + ("the hook FAILS (empty directory)" if knobs["empty"] == "fail"
                                                 else "the hook succeeds"))
    skipped = [e for e in entries if e.action == "skip"]
    if skipped:
        lines.append("")
        lines.append("skipped:")
        lines.extend(f"     {e.path}  -- {e.reason}" for e in skipped)
    for w in warnings:
        lines.append(w if w.startswith("finding: ") else f"warning: {w}")
    return "\n".join(lines) + "\n"


def _visible(text, keep_layout=False):
    """File names in a hook directory are chosen by customers: show them as
    data, never as terminal control (emitter/safetext.py; imported here, off
    the hook's hot path, because it needs ``re``)."""
    from emitter.safetext import visible

    return visible(text, keep_layout=keep_layout)
