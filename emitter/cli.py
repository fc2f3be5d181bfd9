"""``hookscope``: one console script, many subcommands.

This dispatcher is stdlib only and imports a subcommand's module only when
that subcommand runs, so ``hookscope run`` (a Slurm hook, on every job) never
pays for click, DuckDB or nats-py.  ``run`` and ``plan`` are plain
``main(argv) -> int`` functions; every other subcommand is a click command,
the thin layer over its package's library.
"""

import sys

#: name -> ("module:attr", one-line help).  The owner module defines the attr.
COMMANDS = {
    "run": ("emitter.runcli:run_main", "Run a hook directory the way Slurm/the platform would, recorded"),
    "plan": ("emitter.runcli:plan_main", "Show what 'run' would run, in order, and what it would skip"),
    "exec": ("emitter.execcli:exec_main", "Run one script as its caller would (a platform's dispatcher), recorded"),
    "run-parts": ("emitter.execcli:run_parts_main", "Debian run-parts, option for option, every part recorded"),
    "agent": ("emitter.agentcli:agent", "Ship the node journal and GPU metrics over NATS JetStream"),
    "collect": ("collector.cli:collect", "Consume JetStream into DuckDB and the Parquet archive"),
    "rebuild": ("collector.cli:rebuild", "Rebuild the DuckDB store from the Parquet archive or the stream"),
    "compact": ("collector.cli:compact", "Compact the Parquet archive: one sorted file per closed day and partition"),
    "serve": ("dashboards.serve:serve", "Embedded nats-server + collector + dashboard on one machine"),
    "audit": ("queries.cli:audit", "Audit trail: jobs, scripts, nodes, users, hash-chain verification"),
    "why": ("queries.cli:why", "Explain why a node drained or is failing hooks"),
    "drains": ("queries.cli:drains", "Nodes whose latest hook failed, grouped by cause"),
    "dashboard": ("dashboards.cli:dashboard", "Serve the web dashboard (read-only)"),
    "report": ("dashboards.cli:report", "Write a self-contained HTML report for a job or a node"),
    "doctor": ("emitter.doctor:doctor", "Check this node's hookscope set-up and say how to fix it"),
}


def _usage(out):
    out.write("usage: hookscope COMMAND [ARGS]...\n\ncommands:\n")
    for name, (_, help_) in COMMANDS.items():
        out.write(f"  {name:<10} {help_}\n")
    out.write("\nRun 'hookscope COMMAND --help' for a command's options and an example.\n")


def _load(target):
    import importlib

    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        _usage(sys.stdout)
        return 0
    if argv[0] == "--version":
        from emitter import __version__

        print(f"hookscope {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"hookscope: unknown command {name!r}\n")
        _usage(sys.stderr)
        return 2
    target = COMMANDS[name][0]
    try:
        fn = _load(target)
    except (ImportError, AttributeError) as exc:
        sys.stderr.write(f"hookscope {name}: not available in this installation ({exc})\n")
        return 2
    if name in ("run", "plan", "exec", "run-parts"):
        return fn(rest)
    # click command: standalone mode handles usage errors and exit codes.
    # -h as well as --help on every click command, whatever its module declares
    return fn.main(args=rest, prog_name=f"hookscope {name}", help_option_names=["-h", "--help"])


if __name__ == "__main__":
    sys.exit(main())
