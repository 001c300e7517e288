"""A shard's lease as a ``coordination.k8s.io/v1`` Lease object, through the official
``kubernetes`` client: the API server's resourceVersion is the compare-and-swap token (a
replace carrying a stale one is refused with 409 Conflict, a create of an existing name
with 409 AlreadyExists), so two replicas racing for the lease cannot both win.

Mapping: holder -> spec.holderIdentity, term -> spec.leaseTransitions, renewed_at ->
spec.renewTime (MicroTime, UTC), duration_s -> spec.leaseDurationSeconds (rounded up),
in_sync -> the annotation ``contentembed.io/in-sync`` (a JSON list), version ->
metadata.resourceVersion; the Lease's other annotations travel in ``extra``.

Every call carries a short request timeout and the in-cluster client retries nothing, so
a replica cut off from the API server learns it (LeaseUnavailable) within seconds.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import threading
from pathlib import Path

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from contentembed.services.index.lease import LeaseConflict, LeaseRecord, LeaseUnavailable

IN_SYNC_ANNOTATION = "contentembed.io/in-sync"
DEFAULT_TIMEOUT_S = 2.0
_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class _MicroTime(datetime.datetime):
    """A datetime that the client serializes with all six fractional digits.

    The client writes datetimes with ``isoformat()``, which leaves the fraction out when
    the microseconds are exactly 0; the API server parses a MicroTime with the fixed layout
    ``2006-01-02T15:04:05.000000Z07:00`` and refuses such a Lease with 400 BadRequest."""

    def isoformat(self, sep: str = "T", timespec: str = "microseconds") -> str:
        return super().isoformat(sep, timespec)


def _micro_time(timestamp: float) -> _MicroTime:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return _MicroTime(moment.year, moment.month, moment.day, moment.hour, moment.minute,
                      moment.second, moment.microsecond, tzinfo=datetime.UTC)


def _timestamp(moment: datetime.datetime | None) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def api_client_for(configuration: client.Configuration) -> client.ApiClient:
    """An ApiClient for the lease that retries nothing: a retried PUT whose first try
    landed would read as a conflict, and each retry would add a timeout to how long a
    replica cut off from the API server takes to learn it."""
    configuration.retries = False
    return client.ApiClient(configuration)


class KubernetesLease:
    """One shard's lease: the Lease ``name`` in ``namespace``."""

    def __init__(self, namespace: str, name: str, api_client: client.ApiClient, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.namespace = namespace
        self.name = name
        self.timeout_s = timeout_s
        self._api = client.CoordinationV1Api(api_client)
        # The last Lease seen, so a swap from it keeps what this class does not map
        # (labels, owner references, acquireTime) instead of replacing them with nothing.
        self._seen_lock = threading.Lock()
        self._seen: client.V1Lease | None = None

    @classmethod
    def from_cluster(cls, namespace: str | None, name: str, *,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> KubernetesLease:
        """Inside a pod, as its service account (``namespace`` None: the pod's own);
        outside a cluster, as the kubeconfig (KUBECONFIG, else ~/.kube/config) says
        (``namespace`` None: its current context's, else "default")."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            if namespace is None:
                namespace = _NAMESPACE_FILE.read_text().strip()
        else:
            config.load_kube_config(client_configuration=configuration)
            if namespace is None:
                _, current = config.list_kube_config_contexts()
                namespace = current.get("context", {}).get("namespace") or "default"
        return cls(namespace, name, api_client_for(configuration), timeout_s=timeout_s)

    def close(self) -> None:
        self._api.api_client.close()

    # -- the LeaseStore protocol -----------------------------------------------------------
    def read(self) -> LeaseRecord:
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace,
                                                    _request_timeout=self.timeout_s)
        except ApiException as error:
            if error.status == 404:
                return LeaseRecord()
            raise self._unavailable("read", error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self._unavailable("read", error) from None
        return self._record(lease)

    def swap(self, expected: LeaseRecord, new: LeaseRecord) -> LeaseRecord:
        body = self._body(expected, new)
        try:
            if not expected.version:
                stored = self._api.create_namespaced_lease(self.namespace, body,
                                                           _request_timeout=self.timeout_s)
            else:
                stored = self._api.replace_namespaced_lease(self.name, self.namespace, body,
                                                            _request_timeout=self.timeout_s)
        except ApiException as error:
            if error.status == 409:
                raise LeaseConflict(
                    f"lease {self.namespace}/{self.name} changed since version "
                    f"{expected.version or '(none)'}: {error.reason}") from None
            raise self._unavailable("swap", error) from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise self._unavailable("swap", error) from None
        return self._record(stored)

    # -- mapping ---------------------------------------------------------------------------
    def _record(self, lease: client.V1Lease) -> LeaseRecord:
        metadata = lease.metadata or client.V1ObjectMeta()
        spec = lease.spec or client.V1LeaseSpec()
        annotations = dict(metadata.annotations or {})
        try:
            in_sync = json.loads(annotations.pop(IN_SYNC_ANNOTATION, "[]"))
            if not isinstance(in_sync, list) or not all(isinstance(r, str) for r in in_sync):
                raise ValueError(f"not a list of replica ids: {in_sync!r}")
        except ValueError as error:
            raise LeaseUnavailable(f"lease {self.namespace}/{self.name}: annotation "
                                   f"{IN_SYNC_ANNOTATION}: {error}") from None
        with self._seen_lock:
            self._seen = lease
        return LeaseRecord(
            holder=spec.holder_identity or "",
            term=spec.lease_transitions or 0,
            in_sync=tuple(in_sync),
            renewed_at=_timestamp(spec.renew_time),
            duration_s=float(spec.lease_duration_seconds or 0),
            version=metadata.resource_version or "",
            extra=annotations,
        )

    def _body(self, expected: LeaseRecord, new: LeaseRecord) -> client.V1Lease:
        with self._seen_lock:
            seen = self._seen
        if expected.version and seen is not None and seen.metadata is not None \
                and seen.metadata.resource_version == expected.version:
            lease = seen.model_copy(deep=True)
        else:
            lease = client.V1Lease()
        lease.api_version = "coordination.k8s.io/v1"
        lease.kind = "Lease"
        metadata = lease.metadata or client.V1ObjectMeta()
        metadata.name = self.name
        metadata.namespace = self.namespace
        metadata.resource_version = expected.version or None
        metadata.annotations = {**(metadata.annotations or {}), **expected.extra, **new.extra,
                                IN_SYNC_ANNOTATION: json.dumps(list(new.in_sync))}
        lease.metadata = metadata
        spec = lease.spec or client.V1LeaseSpec()
        renewed = _micro_time(new.renewed_at)
        if new.holder != expected.holder or not expected.version:
            spec.acquire_time = renewed
        elif spec.acquire_time is not None:
            spec.acquire_time = _micro_time(_timestamp(spec.acquire_time))
        spec.holder_identity = new.holder or None
        spec.lease_transitions = new.term
        spec.renew_time = renewed
        # The API server refuses leaseDurationSeconds <= 0: none at all then.
        spec.lease_duration_seconds = math.ceil(new.duration_s) if new.duration_s > 0 else None
        lease.spec = spec
        return lease

    def _unavailable(self, what: str, error: BaseException) -> LeaseUnavailable:
        if isinstance(error, ApiException):
            detail = f"{error.status} {error.reason}"
        else:
            detail = f"{type(error).__name__}: {error}"
        return LeaseUnavailable(f"lease {self.namespace}/{self.name}: {what}: {detail}")
