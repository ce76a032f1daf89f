"""Train the churn classifier with data parallelism across the nodes of a distributed TrainingRun.

Every node (rank) of the run's Indexed Job runs this script with the environment the operator
gave it: MLFLOW_RUN_ID (the one run of all ranks), MASTER_ADDR / MASTER_PORT (rank 0's stable
name in the run's headless Service), WORLD_SIZE and RANK (the pod's completion index).

Each rank holds its own shard of the training rows (every WORLD_SIZE-th row, starting at its
rank) and computes the gradient of a logistic regression's log loss on that shard only. The
ranks sum their gradients with an all-reduce over TCP (rank 0 collects the partial sums and
sends the total back: a small real collective, no framework), so each step uses every rank's
data and every rank takes the same step. In the first all-reduce each rank also reports how
many rows it holds, so rank 0 can log who took part.

Rank 0 alone logs params, metrics and the model, as MLflow's autologgers do; the other ranks
log only their system metrics (`system/node-<rank>/...`, MLFLOW_SYSTEM_METRICS_NODE_ID), with a
monitor on the run rather than `mlflow.start_run()`, which would end the run when they exit.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import time

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

CONNECT_TIMEOUT = 300.0


def param(name: str, default: str) -> str:
    return os.environ.get(f"MLFLOW_PARAM_{name.upper()}", default)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=int(param("epochs", "300")))
    parser.add_argument("--learning-rate", type=float, default=float(param("learning_rate", "0.5")))
    parser.add_argument("--l2", type=float, default=float(param("l2", "0.001")))
    parser.add_argument("--random-state", type=int, default=int(param("random_state", "42")))
    return parser.parse_args()


# --------------------------------------------------------------------------- the collective


def _send(connection: socket.socket, array: np.ndarray) -> None:
    data = np.ascontiguousarray(array, dtype=np.float64).tobytes()
    connection.sendall(struct.pack("!Q", len(data)) + data)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("a rank closed its connection mid-step")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(connection: socket.socket) -> np.ndarray:
    (size,) = struct.unpack("!Q", _receive_exactly(connection, 8))
    return np.frombuffer(_receive_exactly(connection, size), dtype=np.float64).copy()


class StarAllReduce:
    """Sum arrays across ranks: every rank sends its array to rank 0, which adds them and sends
    the sum back. Rank 0 listens on MASTER_ADDR:MASTER_PORT; the others connect to it."""

    def __init__(self, rank: int, world_size: int, address: str, port: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.peers: list[socket.socket] = []
        self.upstream: socket.socket | None = None
        if world_size == 1:
            return
        if rank == 0:
            host = socket.gethostbyname(address)  # rank 0's own address (its name in the Service)
            with socket.create_server((host, port)) as server:
                server.settimeout(CONNECT_TIMEOUT)
                by_rank: dict[int, socket.socket] = {}
                while len(by_rank) < world_size - 1:
                    connection, _ = server.accept()
                    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    by_rank[int(_receive(connection)[0])] = connection
                self.peers = [by_rank[r] for r in sorted(by_rank)]
        else:
            self.upstream = self._connect(address, port)
            _send(self.upstream, np.array([rank], dtype=np.float64))

    @staticmethod
    def _connect(address: str, port: int) -> socket.socket:
        """Rank 0 may start later than this rank (or its name may not resolve yet): retry."""
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                connection = socket.create_connection((address, port), timeout=CONNECT_TIMEOUT)
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return connection
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def sum(self, array: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return array.copy()
        if self.upstream is not None:
            _send(self.upstream, array)
            return _receive(self.upstream)
        total = array.astype(np.float64).copy()
        for peer in self.peers:
            total += _receive(peer)
        for peer in self.peers:
            _send(peer, total)
        return total

    def close(self) -> None:
        for connection in [*self.peers, *([self.upstream] if self.upstream else [])]:
            connection.close()


# --------------------------------------------------------------------------- training


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def main() -> None:
    args = parse_args()
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    run_id = os.environ["MLFLOW_RUN_ID"]
    # Rank 0 logs everything; the others only their system metrics (no start_run: see above).
    monitor = None if rank == 0 else SystemMetricsMonitor(run_id)
    if monitor is not None:
        monitor.start()
    collective = StarAllReduce(rank, world_size, os.environ.get("MASTER_ADDR", "127.0.0.1"),
                               int(os.environ.get("MASTER_PORT", "29500")))
    try:
        features, target = load_breast_cancer(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            features, target, test_size=0.25, random_state=args.random_state, stratify=target)
        scaler = StandardScaler().fit(x_train)
        # This rank's shard: its rows only take part in its gradient.
        x_shard = scaler.transform(x_train)[rank::world_size]
        y_shard = y_train[rank::world_size]
        rows_by_rank = collective.sum(np.eye(world_size)[rank] * len(y_shard))
        total_rows = rows_by_rank.sum()
        weights = np.zeros(x_shard.shape[1] + 1)
        with mlflow.start_run(run_id=run_id, log_system_metrics=True) if rank == 0 else _nothing():
            if rank == 0:
                mlflow.log_metrics({"world_size": world_size, "ranks_contributed": float((rows_by_rank > 0).sum()),
                                    "rows_total": float(total_rows),
                                    **{f"rows_rank_{r}": float(n) for r, n in enumerate(rows_by_rank)}})
            for epoch in range(args.epochs):
                predicted = sigmoid(x_shard @ weights[:-1] + weights[-1])
                error = predicted - y_shard
                local = np.concatenate([x_shard.T @ error, [error.sum()],
                                        [-np.sum(y_shard * np.log(predicted + 1e-12)
                                                 + (1 - y_shard) * np.log(1 - predicted + 1e-12))]])
                total = collective.sum(local)  # every rank's gradient, summed
                gradient = total[:-1] / total_rows
                gradient[:-1] += args.l2 * weights[:-1]
                weights -= args.learning_rate * gradient
                if rank == 0 and (epoch % 10 == 0 or epoch == args.epochs - 1):
                    mlflow.log_metric("train_loss", total[-1] / total_rows, step=epoch)
            if rank == 0:
                model = LogisticRegression()
                model.classes_ = np.array([0, 1])
                model.coef_, model.intercept_ = weights[None, :-1], weights[-1:]
                model.n_features_in_ = x_shard.shape[1]
                pipeline = Pipeline([("scale", scaler), ("classify", model)])
                predicted_test = pipeline.predict(x_test)
                mlflow.log_metrics({
                    "accuracy": accuracy_score(y_test, predicted_test),
                    "f1": f1_score(y_test, predicted_test),
                    "roc_auc": roc_auc_score(y_test, pipeline.predict_proba(x_test)[:, 1]),
                })
                mlflow.sklearn.log_model(pipeline, name="model", input_example=x_test[:3])
            # A barrier: every rank ends once rank 0 has logged the model, while the run is
            # still RUNNING (the other ranks' system metrics monitors log until then).
            collective.sum(np.zeros(1))
    finally:
        collective.close()
        if monitor is not None:
            monitor.finish()


class _nothing:
    """A context that does nothing: what ranks other than 0 enter instead of the run."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


if __name__ == "__main__":
    main()
