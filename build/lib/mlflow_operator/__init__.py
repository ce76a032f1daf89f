"""mlflow-operator: MLflow experiments, training runs and registered models as Kubernetes resources."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlflow-operator")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
