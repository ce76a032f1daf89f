"""The `mlflow-operator` command."""

from __future__ import annotations

import argparse
import logging
import sys

from mlflow_operator import __version__
from mlflow_operator.runtime.config import add_run_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlflow-operator",
        description="Reconcile Experiment, TrainingRun and RegisteredModel resources against MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"mlflow-operator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator until SIGTERM/SIGINT")
    add_run_arguments(run)
    release = commands.add_parser(
        "release-finalizers",
        help="after an uninstall: take the operator's finalizers off its objects and training Jobs",
    )
    release.add_argument("--namespace", action="append", dest="namespaces",
                         help="only this namespace (repeatable; default: every namespace)")
    release.add_argument("--operator-namespace", help="namespace of the operator's pods, to wait for them to stop")
    release.add_argument("--operator-selector", help="label selector of the operator's pods")
    release.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for the operator's pods")
    probe = commands.add_parser("probe", help="exit 0 if the operator's heartbeat file is recent (exec probes)")
    probe.add_argument("--heartbeat-file", required=True, help="the file given to `run --heartbeat-file`")
    probe.add_argument("--max-age", type=float, default=30.0, help="seconds a beat stays good (default 30)")
    args = parser.parse_args(argv)

    if args.command == "probe":
        from pathlib import Path

        from mlflow_operator.runtime.heartbeat import age_seconds

        age = age_seconds(Path(args.heartbeat_file))
        if age is None or age > args.max_age:
            print(f"no heartbeat in {args.heartbeat_file} for {'ever' if age is None else f'{age:.0f}s'}",
                  file=sys.stderr)
            return 1
        return 0

    if args.command == "run":
        # Imported late: `--help` and `--version` should not pay for kopf and mlflow imports.
        from mlflow_operator.runtime.process import run_operator

        config = config_from_args(args)
        run_operator(config)
        return 0
    if args.command == "release-finalizers":
        import asyncio

        from mlflow_operator.runtime.release import OperatorStillRunning, run_release

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            asyncio.run(run_release(args.namespaces, args.operator_namespace, args.operator_selector, args.timeout))
        except OperatorStillRunning as error:
            print(f"release-finalizers: {error}", file=sys.stderr)
            return 1
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
