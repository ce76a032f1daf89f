"""What Kubernetes authorization adds to one MLflow call, measured in the sandbox.

The sandbox runs the same MLflow (3.17.2, sqlite, one worker) twice: `mlflow` with
workspaces and the Kubernetes plugins (every request judged by a SelfSubjectAccessReview of
the caller's token, cached by the plugin for 300 s per token, namespace, resource, verb and
name) and `mlflow-open` without. This reads one experiment N times from each, sequentially:

- open: the server without workspaces or authentication;
- warm: the workspace server, the same token and experiment each time (the plugin's cache);
- cold: the workspace server, a different experiment each time (created beforehand), so every
  call needs a review from the API server first.

    .venv/bin/python benchmarks/authorization.py --calls 300 --output authorization
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
RESULTS = ROOT / "benchmarks" / "results"
WORKSPACE = "default"


def timed(session: requests.Session, url: str, headers: dict[str, str], params: dict[str, str],
          expect: int) -> float:
    started = time.perf_counter()
    response = session.get(url, headers=headers, params=params, timeout=30)
    elapsed = time.perf_counter() - started
    assert response.status_code == expect, (url, response.status_code, response.text[:200])
    return elapsed


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(1000 * statistics.median(ordered), 2),
            "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--output", default="authorization")
    args = parser.parse_args()
    ports = json.loads((STATE / "ports.json").read_text())
    token = (STATE / "mlflow-user-token").read_text().strip()
    workspace_url = f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow"
    open_url = f"http://127.0.0.1:{ports['mlflow-open']}/api/2.0/mlflow"
    authorized = {"Authorization": f"Bearer {token}", "X-MLFLOW-WORKSPACE": WORKSPACE}
    name = f"bench-authorization-{uuid.uuid4().hex[:8]}"
    with requests.Session() as session:
        for url, headers in ((open_url, {}), (workspace_url, authorized)):
            session.post(f"{url}/experiments/create", json={"name": name}, headers=headers, timeout=30)
        found = {"experiment_name": name}
        others = [f"{name}-{i}" for i in range(args.calls)]
        for other in others:  # never read before: the plugin has no decision cached for them
            session.post(f"{workspace_url}/experiments/create", json={"name": other}, headers=authorized, timeout=30)
        for url, headers in ((open_url, {}), (workspace_url, authorized)):  # warm both up
            timed(session, f"{url}/experiments/get-by-name", headers, found, 200)
        results = {
            "open": [timed(session, f"{open_url}/experiments/get-by-name", {}, found, 200)
                     for _ in range(args.calls)],
            "warm": [timed(session, f"{workspace_url}/experiments/get-by-name", authorized, found, 200)
                     for _ in range(args.calls)],
            "cold": [timed(session, f"{workspace_url}/experiments/get-by-name", authorized,
                           {"experiment_name": other}, 200) for other in others],
        }
    report = {"calls": args.calls, **{key: summary(samples) for key, samples in results.items()},
              "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| server | median | p90 |", "|---|---|---|"]
    labels = {"open": "without workspaces", "warm": "workspaces, review cached", "cold": "workspaces, a review per call"}
    lines += [f"| {labels[key]} | {report[key]['median_ms']} ms | {report[key]['p90_ms']} ms |" for key in labels]
    text = f"One `experiments/get-by-name`, {args.calls} calls each, sequential:\n\n" + "\n".join(lines) + "\n"
    (RESULTS / f"{args.output}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
