"""HTTP servers a test starts on 127.0.0.1 to play a tracking server: one that records what
it receives and answers what it is told, and one that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def send(handler: BaseHTTPRequestHandler, status: int, content_type: str, payload: bytes,
         headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def serve(port: int, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1:`port`, serving in the background."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class RecordingServer:
    """Answers every request with `status` and `body`, and records each request."""

    port: int
    status: int = 200
    body: str = "<html>not an MLflow server</html>"
    # Sent as the Location header (with a 3xx status: a redirect).
    location: str | None = None
    requests: list[Received] = field(default_factory=list)

    def under(self, prefix: str) -> list[Received]:
        """Requests whose path starts with `prefix`: give each object its own tracking-URI
        path, so that requests left over from other tests' objects do not count."""
        return [r for r in self.requests if r.path.startswith(prefix)]

    def __enter__(self) -> "RecordingServer":
        recorder = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                recorder.requests.append(Received(self.command, self.path, dict(self.headers)))
                headers = {"Location": recorder.location} if recorder.location else {}
                send(self, recorder.status, "text/html", recorder.body.encode(), headers)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self._server = serve(self.port, Handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class ForwardingServer:
    """Forwards every request to a real MLflow server (`upstream`, on 127.0.0.1) until told to
    answer `odd` instead: an allowlisted server that starts answering JSON of another shape."""

    port: int
    upstream: str
    odd: str | None = None

    def __enter__(self) -> "ForwardingServer":
        import urllib.error
        import urllib.request

        forwarder = self

        class Handler(QuietHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if forwarder.odd is not None:
                    status, payload = 200, forwarder.odd.encode()
                else:
                    request = urllib.request.Request(forwarder.upstream + self.path, data=body, method=self.command,
                                                     headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(request, timeout=10) as reply:
                            status, payload = reply.status, reply.read()
                    except urllib.error.HTTPError as error:
                        status, payload = error.code, error.read()
                send(self, status, "application/json", payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        self._server = serve(self.port, Handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentServer:
    """Accepts connections and never answers, like a server that hung (bounded: it lets go
    of every connection when the test ends)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []

    def __enter__(self) -> "SilentServer":
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(128)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._held.append(connection)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        time.sleep(0.3)
        for connection in self._held:
            connection.close()
        self._sock.close()


def unused_port() -> int:
    """A port nothing listens on and the operator's allowlist does not name."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
