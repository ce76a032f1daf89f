"""Train a churn-style classifier and log it to the MLflow run the operator created.

In a TrainingRun's Job the operator sets MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID and
MLFLOW_RUN_ID, so `mlflow.start_run()` resumes that run, and passes each of the
TrainingRun's params as MLFLOW_PARAM_<KEY> (the operator has already logged them; this
script only reads them). It logs metrics (accuracy also step by step as the forest grows),
a confusion-matrix figure and the model, named "model" so that `registerModel` finds it.

No churn dataset ships with scikit-learn and the build machines have no internet, so the
data is scikit-learn's bundled breast-cancer set: a real binary-classification table that
stands in for "will this customer churn?".
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")  # no display in a container

import mlflow  # noqa: E402
import mlflow.sklearn  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score, f1_score, roc_auc_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

STEPS = 4


def param(name: str, default: str) -> str:
    return os.environ.get(f"MLFLOW_PARAM_{name.upper()}", default)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-estimators", type=int, default=int(param("n_estimators", "100")))
    parser.add_argument("--max-depth", type=int, default=int(param("max_depth", "8")))
    parser.add_argument("--test-size", type=float, default=float(param("test_size", "0.25")))
    parser.add_argument("--random-state", type=int, default=int(param("random_state", "42")))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    features, target = load_breast_cancer(return_X_y=True, as_frame=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=args.test_size, random_state=args.random_state, stratify=target
    )
    model = RandomForestClassifier(
        n_estimators=0, max_depth=args.max_depth, random_state=args.random_state, n_jobs=1, warm_start=True
    )
    with mlflow.start_run():  # resumes MLFLOW_RUN_ID when the operator started the run
        # The forest grows in 4 steps; the accuracy after each is logged with its step, so a
        # sweep's median stopping can compare this trial with earlier ones along the way.
        for step in range(1, STEPS + 1):
            model.n_estimators = max(1, args.n_estimators * step // STEPS)
            model.fit(x_train, y_train)
            mlflow.log_metric("accuracy", accuracy_score(y_test, model.predict(x_test)), step=step)
        predicted = model.predict(x_test)
        scores = model.predict_proba(x_test)[:, 1]
        mlflow.log_metrics({  # accuracy: logged at the last step above
            "f1": f1_score(y_test, predicted),
            "roc_auc": roc_auc_score(y_test, scores),
        })
        display = ConfusionMatrixDisplay.from_predictions(y_test, predicted)
        mlflow.log_figure(display.figure_, "confusion_matrix.png")
        # We built this forest ourselves, so its tree type may be trusted when saved with skops.
        mlflow.sklearn.log_model(model, name="model", input_example=x_test.head(3),
                                 skops_trusted_types=["sklearn.tree._tree.Tree"])


if __name__ == "__main__":
    main()
