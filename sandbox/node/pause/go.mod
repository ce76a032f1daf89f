module mlflow-operator.dev/sandbox/pause

go 1.22
