"""The `mlflow-operator` command."""

from __future__ import annotations

import argparse
import logging
import sys

from mlflow_operator import __version__
from mlflow_operator.config import add_run_arguments, config_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlflow-operator",
        description="Reconcile Experiment, TrainingRun and RegisteredModel resources against MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"mlflow-operator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator until SIGTERM/SIGINT")
    add_run_arguments(run)
    args = parser.parse_args(argv)

    if args.command == "run":
        # Imported late: `--help` and `--version` should not pay for kopf and mlflow imports.
        from mlflow_operator.runtime import run_operator

        config = config_from_args(args)
        run_operator(config)
        return 0
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
