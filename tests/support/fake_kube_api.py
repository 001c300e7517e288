"""A fake Kubernetes API server for ``coordination.k8s.io/v1`` Leases, on 127.0.0.1 port 0:
what KubernetesLease is tested against.

It serves GET (one Lease or the list), POST and PUT under
``/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases[/{name}]`` and answers as the
real API server does where the lease code depends on it:

- every write takes the next resourceVersion (one counter for the whole server, as etcd's
  revision), returned as a string;
- PUT is a compare-and-swap: a metadata.resourceVersion other than the stored one is 409
  with a Status of reason Conflict, none at all is 422 Invalid (a Lease allows no
  unconditional update), a Lease that does not exist is 404 (nor create-on-update);
- POST of a name that exists is 409 AlreadyExists; GET of a missing one is 404 NotFound;
- spec.renewTime and spec.acquireTime are MicroTime: anything but RFC 3339 with exactly
  six fractional digits is 400 BadRequest (the server parses them with the fixed layout
  2006-01-02T15:04:05.000000Z07:00), and they come back in UTC with a Z;
- leaseDurationSeconds <= 0 or leaseTransitions < 0 is 422 Invalid.

``pause()`` makes it accept requests and neither carry out nor answer them (a partition:
what is sent meanwhile is lost) until ``resume()``;
``fail_next(code, reason)`` answers the next request with that Status instead (RBAC's
403, an overloaded server's 429 or 500); ``stop()`` closes it (a dead API server) and lets
paused requests go.
"""

from __future__ import annotations

import datetime
import json
import re
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GROUP = "coordination.k8s.io"
PREFIX = f"/apis/{GROUP}/v1/namespaces/"
_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([a-z0-9-]+)/leases(?:/([a-z0-9.-]+))?$")
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.name = code, reason, message, name

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        }
        if self.name:
            body["details"] = {"name": self.name, "group": GROUP, "kind": "leases"}
        return body


def _micro_time(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _MICRO_TIME.match(value):
        raise ApiError(400, "BadRequest",
                       f'Lease in version "v1" cannot be handled as a Lease: {field}: parsing time '
                       f'{json.dumps(value)} as "2006-01-02T15:04:05.000000Z07:00": cannot parse')
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKubeApi:
    """The server: ``url`` for a client's Configuration.host; ``leases`` what is stored."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._revision = 0
        self._answering = threading.Event()
        self._answering.set()
        self._stopped = False
        self._failures: list[ApiError] = []
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def start(self) -> FakeKubeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._answering.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        # Kept-alive connections too: a dead server answers nothing on them either.
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pause(self) -> None:
        self._answering.clear()

    def resume(self) -> None:
        self._answering.set()

    def fail_next(self, code: int, reason: str, count: int = 1) -> None:
        with self._lock:
            self._failures.extend(ApiError(code, reason, f"injected {reason}") for _ in range(count))

    def bump(self, namespace: str, name: str) -> str:
        """Someone else's write to the Lease (a new resourceVersion, nothing else)."""
        with self._lock:
            lease = self.leases[(namespace, name)]
            lease["metadata"]["resourceVersion"] = self._next_version()
            return lease["metadata"]["resourceVersion"]

    # -- the API ---------------------------------------------------------------------------
    def _next_version(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _validated(self, body: Any, namespace: str, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body is not a Lease object")
        if body.get("kind", "Lease") != "Lease" or body.get("apiVersion", f"{GROUP}/v1") != f"{GROUP}/v1":
            raise ApiError(400, "BadRequest", "the body is not a coordination.k8s.io/v1 Lease")
        metadata = dict(body["metadata"])
        if not metadata.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if name is not None and metadata["name"] != name:
            raise ApiError(400, "BadRequest", f"the name of the object ({metadata['name']}) does "
                           f"not match the name on the URL ({name})")
        if metadata.get("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                           "match the namespace sent on the request")
        spec = dict(body.get("spec") or {})
        for field in ("renewTime", "acquireTime"):
            if spec.get(field) is not None:
                spec[field] = _micro_time(spec[field], f"v1.LeaseSpec.{field[0].upper()}{field[1:]}")
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            raise ApiError(422, "Invalid", f"spec.leaseDurationSeconds: Invalid value: {duration}: "
                           "must be greater than 0", metadata["name"])
        transitions = spec.get("leaseTransitions")
        if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
            raise ApiError(422, "Invalid", f"spec.leaseTransitions: Invalid value: {transitions}: "
                           "must be greater than or equal to 0", metadata["name"])
        annotations = metadata.get("annotations") or {}
        if not all(isinstance(v, str) for v in annotations.values()):
            raise ApiError(400, "BadRequest", "metadata.annotations: values must be strings")
        metadata["namespace"] = namespace
        return {"apiVersion": f"{GROUP}/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def get(self, namespace: str, name: str | None) -> dict[str, Any]:
        with self._lock:
            if name is None:
                items = [v for (ns, _), v in sorted(self.leases.items()) if ns == namespace]
                return {"apiVersion": f"{GROUP}/v1", "kind": "LeaseList",
                        "metadata": {"resourceVersion": str(self._revision)}, "items": items}
            if (namespace, name) not in self.leases:
                raise ApiError(404, "NotFound", f'leases.{GROUP} "{name}" not found', name)
            return self.leases[(namespace, name)]

    def create(self, namespace: str, body: Any) -> dict[str, Any]:
        lease = self._validated(body, namespace, None)
        name = lease["metadata"]["name"]
        if lease["metadata"].get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        with self._lock:
            if (namespace, name) in self.leases:
                raise ApiError(409, "AlreadyExists", f'leases.{GROUP} "{name}" already exists', name)
            lease["metadata"].update(
                uid=str(uuid.uuid4()), resourceVersion=self._next_version(),
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self.leases[(namespace, name)] = lease
            return lease

    def replace(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        lease = self._validated(body, namespace, name)
        with self._lock:
            current = self.leases.get((namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'leases.{GROUP} "{name}" not found', name)
            version = lease["metadata"].get("resourceVersion")
            if not version:
                raise ApiError(422, "Invalid", f'Lease.{GROUP} "{name}" is invalid: '
                               "metadata.resourceVersion: Invalid value: 0x0: must be specified "
                               "for an update", name)
            if version != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on leases.{GROUP} '
                               f'"{name}": the object has been modified; please apply your '
                               "changes to the latest version and try again", name)
            for kept in ("uid", "creationTimestamp"):
                lease["metadata"][kept] = current["metadata"][kept]
            lease["metadata"]["resourceVersion"] = self._next_version()
            self.leases[(namespace, name)] = lease
            return lease

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with api._lock:
                    api._connections.add(self.connection)

            def finish(self) -> None:
                with api._lock:
                    api._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (its timeout)

            def _serve(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                with api._lock:
                    api.requests.append((method, path))
                    failure = api._failures.pop(0) if api._failures else None
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if not api._answering.is_set():  # partitioned: this request is lost
                    api._answering.wait()
                    self.close_connection = True
                    return
                try:
                    if failure is not None:
                        raise failure
                    match = _PATH.match(path)
                    if match is None:
                        raise ApiError(404, "NotFound", "the server could not find the requested resource")
                    namespace, name = match.groups()
                    if method == "GET":
                        self._answer(200, api.get(namespace, name))
                        return
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise ApiError(400, "BadRequest", "the body is not JSON") from None
                    if method == "POST" and name is None:
                        self._answer(201, api.create(namespace, body))
                    elif method == "PUT" and name is not None:
                        self._answer(200, api.replace(namespace, name, body))
                    else:
                        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
                except ApiError as error:
                    self._answer(error.code, error.status())

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler


def main() -> None:
    """Serves on --host/--port until killed: a fake API server on a host of its own (a
    network namespace), for partition tests."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    FakeKubeApi(args.host, args.port).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
