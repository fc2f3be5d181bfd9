"""``hookscope-hook``: what slurm.conf names in every hook slot, with no arguments.

The context comes from ``SLURM_SCRIPT_CONTEXT``, the directories and every
setting from the config file.  Whatever goes wrong in hookscope itself, the
scripts still run and their status is returned: a broken config file falls
back to its valid keys and the defaults (with a stderr line and a journal warning), a
journal that cannot be written only loses records.
"""

import os
import sys


def main():
    from emitter import EmitterError, contract
    from emitter import config as cf
    from emitter.journal import ensure_std_fds, say

    ensure_std_fds()

    context = os.environ.get("SLURM_SCRIPT_CONTEXT")
    if context not in contract.CONTEXTS:
        say(
            f"hookscope-hook: SLURM_SCRIPT_CONTEXT is {context!r}, not one of {', '.join(contract.CONTEXTS)}; "
            "hookscope-hook must be started by Slurm (21.08+) from a hook slot, or use "
            "'hookscope run --context CTX --dir DIR'\n")
        return 1
    warnings = []
    try:
        cfg = cf.load_config()
    except EmitterError as exc:
        # Running the scripts from the default directories beats failing the
        # hook (and draining the node) over a typo in our own config.  An
        # untrusted file is ignored whole (its message says what is used).
        msg = str(exc) if isinstance(exc, cf.UntrustedError) else f"{exc} -- ignoring what is invalid until it is fixed"
        say(f"hookscope-hook: {msg}\n")
        warnings.append(msg)
        from emitter.configsalvage import salvage_config

        cfg = salvage_config()
    warnings += cf.deprecations(cfg)
    # env > file > default, validated once (config.RunnerSettings); the context's dirs from the same object
    settings = cf.RunnerSettings.resolve(cfg, context=context)
    dirs = cf.context_dirs(settings, context)
    from emitter import runner

    ran = []
    status, journal = runner.run(settings, context, dirs, extra_warnings=warnings, ran=ran)
    if settings["export"] == "direct" and journal.problem is None:
        from emitter.runcli import export_direct

        export_direct(journal, settings, cfg)
    sig = ran[0].status_signal if ran else None
    if sig is not None and status == 128 + sig:
        # The bare script's death by a signal is what slurmd would have seen.
        from emitter.process import die_by

        die_by(sig)
    return status


def exit_now(status):
    """Exit with ``status`` without CPython's finalization (tearing down every
    module costs about 2 ms, a tenth of a no-op hook).  Everything of ours is
    already closed: the journal is fdatasync'd and closed by the runner, output
    goes out with os.write; Python's own std streams are flushed here."""
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except (OSError, ValueError):
            pass
    os._exit(status if isinstance(status, int) else 0 if status is None else 1)


if __name__ == "__main__":
    sys.exit(main())
