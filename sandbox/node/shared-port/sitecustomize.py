"""Sandbox only (mounted into the chart's MLflow server pods by the `sandbox-shared-port`
admission policy): replicas of one server on the real node share the host network, so each
binds its TCP listening port with SO_REUSEPORT and the kernel spreads new connections over
the replicas that are listening, as a Service spreads them over pod IPs on a real cluster.
Python imports this module at start-up from PYTHONPATH; it acts only with
SANDBOX_SHARED_PORT=1."""

import os
import socket

if os.environ.get("SANDBOX_SHARED_PORT") == "1":
    _bind = socket.socket.bind

    def _bind_shared(self: socket.socket, address) -> None:  # type: ignore[no-untyped-def]
        if self.family in (socket.AF_INET, socket.AF_INET6) and self.type == socket.SOCK_STREAM:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _bind(self, address)

    socket.socket.bind = _bind_shared  # type: ignore[method-assign]
