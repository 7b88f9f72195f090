"""The ``xfel-reduce`` command: a thin layer over the library and the packaged workflow.

In the order a user needs them::

    xfel-reduce inspect RUN_DIR          what is in a run folder (before writing a config)
    xfel-reduce simulate [--config F]    write the synthetic beamtime (the demo)
    xfel-reduce run [--config F] [--profile slurm] [-- snakemake args]
    xfel-reduce watch PROPOSAL_DIR       reduce each new run once its files are complete
    xfel-reduce status [--config F]      done / failed (with log) / pending per run

Exit codes: 0 success, 1 the workflow (or the inspected run) has failures, 2 a usage or
config mistake (reported in one line, without a traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from . import runner
from .runner import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help="workflow config (default: ./config.yaml, else the packaged demo config "
                        f"{runner.DEMO_CONFIG})")


def _add_execution(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="local", metavar="NAME",
                   help="'local' (default), 'slurm' (the packaged SLURM profile) or a "
                        "Snakemake profile directory")
    p.add_argument("--cores", type=int, metavar="N",
                   help="cores for local runs (default: all); per group job under a cluster profile")
    p.add_argument("--no-accounting", action="store_true",
                   help="SLURM cluster without accounting database: poll squeue, not sacct")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xfel-reduce",
        description="Reduce European XFEL runs to validated science data (workflow + library).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `xfel-reduce COMMAND --help` for the options of each command.")
    from importlib.metadata import PackageNotFoundError, version
    try:
        ver = version("xfel-reduce")
    except PackageNotFoundError:  # running from a source tree without install
        ver = "unknown"
    parser.add_argument("--version", action="version", version=f"xfel-reduce {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="what a run folder holds: detectors, sources, trains, problems",
                       description="Pre-flight of one RAW or proc run folder: detectors and "
                                   "modules, sequences, trains, frames per train, memory cells, "
                                   "timeserver, XGM, detector control, instrument, problems.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. <proposal>/raw/r0011")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("simulate", help="write the synthetic beamtime of a config (the demo)",
                       description="Simulate every run of the config's `simulate` block into its "
                                   "proposal_dir (what the demo's simulate rules do).")
    _add_config(p)
    _add_execution(p)

    p = sub.add_parser("run", help="run the workflow (snakemake) on a config",
                       description="Run the packaged workflow from this directory; relative "
                                   "paths in the config are relative to it.  Arguments after "
                                   "`--` go to snakemake unchanged (targets, -n, --forcerun …).")
    _add_config(p)
    _add_execution(p)
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, metavar="-- SNAKEMAKE_ARGS")

    p = sub.add_parser("watch", help="reduce each new run of a proposal once its files are complete",
                       description="Poll PROPOSAL_DIR/raw and reduce every new run once, when no "
                                   "file of it has changed for --stable-seconds and every file "
                                   "opens complete.  Runs not listed in the config's `runs` take "
                                   "--technique (or are skipped).  Stop with Ctrl-C.")
    p.add_argument("proposal_dir", metavar="PROPOSAL_DIR", help="proposal folder holding raw/")
    _add_config(p)
    _add_execution(p)
    p.add_argument("--stable-seconds", type=float, default=60.0, metavar="S",
                   help="a run is complete when no file changed for S seconds (default 60)")
    p.add_argument("--poll-seconds", type=float, default=30.0, metavar="S",
                   help="seconds between looks at the raw folder (default 30)")
    p.add_argument("--technique", choices=["none", "spi", "sfx", "saxs", "xpcs", "spectroscopy"],
                   help="technique of runs the config does not list (default: skip them)")
    p.add_argument("--max-polls", type=int, metavar="N", help=argparse.SUPPRESS)

    p = sub.add_parser("status", help="which runs are done, failed (with the log) or pending",
                       description="Status of the config's runs and of every run watch has seen.")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


# -- commands -----------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from .preflight import InspectError, inspect_run

    try:
        info = inspect_run(Path(args.run_dir))
    except InspectError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(info.to_dict(), indent=1, allow_nan=False))
    else:
        print(info.format())
    return EXIT_OK


def _results_of(config: dict) -> Path:
    res = Path(config["results_dir"])
    return res if res.is_absolute() else Path.cwd() / res


def cmd_simulate(args: argparse.Namespace) -> int:
    path = runner.resolve_config(args.config)
    cfg = runner.load_config(path)
    if not cfg.get("simulate", {}).get("enabled", False):
        raise UsageError(f"{path}: `simulate.enabled` is not true: this config describes real "
                         "data, there is nothing to simulate")
    cmd = runner.snakemake_command(path, profile=args.profile, cores=args.cores,
                                   targets=["simulate_all"], no_accounting=args.no_accounting)
    rc = runner.run_workflow(cmd, runner.invocation_log(_results_of(cfg), "simulate"))
    return EXIT_OK if rc == 0 else EXIT_FAILED


def cmd_run(args: argparse.Namespace) -> int:
    path = runner.resolve_config(args.config)
    cfg = runner.load_config(path)
    extra = [a for a in args.snakemake_args if a != "--"] if args.snakemake_args else []
    cmd = runner.snakemake_command(path, profile=args.profile, cores=args.cores, extra=extra,
                                   no_accounting=args.no_accounting)
    print(f"xfel-reduce: config {path}", file=sys.stderr)
    rc = runner.run_workflow(cmd, runner.invocation_log(_results_of(cfg), "run"))
    return EXIT_OK if rc == 0 else EXIT_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch import RunWatcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    watcher = RunWatcher(runner.resolve_config(args.config), Path(args.proposal_dir),
                         workdir=Path.cwd(), stable_seconds=args.stable_seconds,
                         technique=args.technique, profile=args.profile, cores=args.cores,
                         no_accounting=args.no_accounting)
    print(f"xfel-reduce: watching {watcher.raw} (complete = unchanged for "
          f"{args.stable_seconds:g} s); state in {watcher.results / '.xfel-reduce'}", file=sys.stderr)
    try:
        watcher.run_forever(args.poll_seconds, args.max_polls)
    except KeyboardInterrupt:
        print("xfel-reduce: watch stopped", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_status, run_status

    cfg = runner.load_config(runner.resolve_config(args.config))
    rows = run_status(cfg, Path.cwd())
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
    else:
        print(format_status(rows))
    return EXIT_FAILED if any(r.status == "failed" for r in rows) else EXIT_OK


COMMANDS = {"inspect": cmd_inspect, "simulate": cmd_simulate, "run": cmd_run,
            "watch": cmd_watch, "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xfel-reduce`` console script; returns the exit code."""
    import signal

    # SIGTERM (a cluster's job end, `kill`) stops watch like Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = build_parser()
    # Options snakemake knows and we do not (-n, --forcerun …) go through to it.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if args.command != "run":
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.snakemake_args = list(args.snakemake_args or []) + unknown
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"xfel-reduce {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
