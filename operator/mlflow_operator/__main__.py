"""`python -m mlflow_operator` is the same as the `mlflow-operator` command."""

import sys

from mlflow_operator.runtime.cli import main

sys.exit(main())
