"""A tiny stand-in for training code, run by sandbox/play_training.py with a pod's env.

It resumes the operator's run (MLFLOW_RUN_ID) like real training code, logs what it is told
to, records the argv it received (to check $(VAR) expansion), and exits with --exit-code.
"""

import argparse
import json
import os
import sys

import mlflow
import mlflow.pyfunc
import pandas as pd


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [2 * x for x in model_input["x"]]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--metric", action="append", default=[], help="name=value")
    parser.add_argument("--model-name", help="log a pyfunc model under this name")
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--end-run", choices=("FINISHED", "FAILED"), help="close the run ourselves first")
    args, _training_args = parser.parse_known_args()  # the rest are the "real" trainer's args
    run_id = os.environ["MLFLOW_RUN_ID"]  # start_run() removes it from the environment
    with mlflow.start_run() as run:
        assert run.info.run_id == run_id, "did not resume the operator's run"
        mlflow.set_tag("trainer.argv", json.dumps(sys.argv[1:]))
        mlflow.set_tag("trainer.env", json.dumps({k: v for k, v in os.environ.items() if k.startswith("MLFLOW_PARAM_")}))
        for item in args.metric:
            name, value = item.split("=", 1)
            mlflow.log_metric(name, float(value))
        if args.model_name:
            mlflow.pyfunc.log_model(name=args.model_name, python_model=Doubler(),
                                    input_example=pd.DataFrame({"x": [1.0, 2.0]}))
    if args.end_run:
        mlflow.MlflowClient().set_terminated(run_id, args.end_run)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
