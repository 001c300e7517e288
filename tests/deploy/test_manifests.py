"""The Kubernetes manifests (deploy/k8s) render, validate and agree with the code.

Every overlay is rendered with `kubectl kustomize`, every object is validated offline
against the Kubernetes schemas of kubernetes-validate (strict), the Prometheus Operator
CRDs against the small schemas in crd_schemas.json, and then checked against the code:
the flags and CONTENTEMBED_* variables each container gets are parsed by that service's
real settings class; ports, probes, grace periods, shard count, gateway endpoints, the
build Job's slices and exit codes, every metric the dashboard and the alerts query
(collected from the services' own metric objects on a fresh registry), and the index
pods' RBAC: exactly the Lease verbs the lease code calls.

kubectl missing: a failure under CI (the Makefile installs it), a skip elsewhere.
KUBECTL_COMPAT=/path/to/another/kubectl renders every overlay with it too and requires the
same objects (used to check kustomize v2.0.3 of kubectl 1.20 against v5).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contentembed.services.common.server import READINESS_SERVICE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "contentembed.json"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
KUBERNETES_VERSION = "1.30.0"
CRD_SCHEMAS = json.loads((Path(__file__).with_name("crd_schemas.json")).read_text())
METRICS_PORT = 9100


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        message = ("kubectl is not installed: `make test` installs Debian's kubernetes-client "
                   "when it is missing; the manifests in deploy/k8s cannot be checked without it")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + " (not CI: skipped)")
    return found


def render_with(binary: str, directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{binary} kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


_rendered: dict[str, list[dict[str, Any]]] = {}


def render(target: str) -> list[dict[str, Any]]:
    if target not in _rendered:
        _rendered[target] = render_with(kubectl(), TARGETS[target])
    return _rendered[target]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def service_classes() -> dict[str, tuple[type, type]]:
    """The module each container runs -> (settings class, service class)."""
    from contentembed.services.gateway.service import GatewayService, GatewaySettings
    from contentembed.services.image_encoder.service import (
        ImageEncoderService,
        ImageEncoderSettings,
    )
    from contentembed.services.index.service import IndexService, IndexSettings
    from contentembed.services.text_encoder.service import TextEncoderService, TextEncoderSettings

    return {
        "contentembed.services.text_encoder": (TextEncoderSettings, TextEncoderService),
        "contentembed.services.image_encoder": (ImageEncoderSettings, ImageEncoderService),
        "contentembed.services.index": (IndexSettings, IndexService),
        "contentembed.services.gateway": (GatewaySettings, GatewayService),
    }


def service_containers(objects: list[dict[str, Any]]) -> list[tuple[dict, dict, str]]:
    """(workload, container, module) for every container that runs a service."""
    found = []
    for workload in objects:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in pod_spec(workload)["containers"]:
            command = container.get("command", [])
            assert command[:2] == ["python", "-m"] and len(command) == 3, (
                f"{workload['metadata']['name']}/{container['name']}: command {command} is not "
                "python -m <service module>")
            assert command[2] in service_classes(), f"unknown service module {command[2]}"
            found.append((workload, container, command[2]))
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment; a Secret's value reads as secret:<name>/<key>."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"secret-{ref['name']}-{ref['key']}"
    return env


def parse_settings(settings_cls: type, container: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                   hostname: str | None = None) -> Any:
    """What the service would start with: its real settings class on these flags and env."""
    from contentembed.services.common.config import load_settings

    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("CONTENTEMBED_"):
                patch.delenv(name)
        for name, value in env_of(container).items():
            patch.setenv(name, value)
        if hostname is not None:
            patch.setattr("socket.gethostname", lambda: hostname)
        return load_settings(settings_cls, list(container.get("args", [])))


def flag_names(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0][2:] for a in args if a.startswith("--")]


# -- rendering and schemas -----------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_renders_and_validates_against_the_kubernetes_schemas(target: str) -> None:
    import kubernetes_validate.utils as kv

    objects = render(target)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "CronJob", "PersistentVolumeClaim", "ConfigMap", "ServiceMonitor",
            "PrometheusRule", "ServiceAccount", "Role", "RoleBinding"} <= kinds, kinds
    for obj in objects:
        where = f"{target}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
            continue
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as error:
            pytest.fail(f"{where}: {error.message} at {list(error.path)}")


@pytest.mark.skipif(not os.environ.get("KUBECTL_COMPAT"), reason="KUBECTL_COMPAT not set")
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_another_kustomize_renders_the_same_objects(target: str) -> None:
    def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"]["name"]): o for o in objects}

    other = keyed(render_with(os.environ["KUBECTL_COMPAT"], TARGETS[target]))
    assert other == keyed(render(target))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_object_is_in_the_overlay_namespace(target: str) -> None:
    namespace = yaml.safe_load((TARGETS[target] / "kustomization.yaml").read_text())["namespace"]
    assert {o["metadata"].get("namespace") for o in render(target)} == {namespace}


# -- services: settings, ports, probes, shutdown -------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_containers_start_with_settings_their_service_accepts(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(target)
    containers = service_containers(objects)
    assert sorted(m.rsplit(".", 1)[1] for _, _, m in containers) == [
        "gateway", "image_encoder", "index", "text_encoder"]
    services = by_kind(objects, "Service")
    for workload, container, module in containers:
        settings_cls, _ = service_classes()[module]
        where = f"{target}: {workload['metadata']['name']}"
        fields = settings_cls.model_fields
        for flag in flag_names(container.get("args", [])):
            assert flag.replace("-", "_") in fields, f"{where}: --{flag} is no {settings_cls.__name__} flag"
        for name in env_of(container):
            if name.startswith("CONTENTEMBED_"):
                field = name.removeprefix("CONTENTEMBED_").lower()
                assert field in fields, f"{where}: {name} is no {settings_cls.__name__} setting"
        replicas = workload["spec"].get("replicas", 1)
        hostname = f"{workload['metadata']['name']}-{replicas - 1}" \
            if workload["kind"] == "StatefulSet" else None
        settings = parse_settings(settings_cls, container, monkeypatch, hostname)
        assert settings.host == "0.0.0.0", where
        assert settings.metrics_port == METRICS_PORT, where
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}, where
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert probe["grpc"]["port"] == settings.port, f"{where}: {kind} is not on --port"
            # Readiness may ask the readiness status (loaded and ready(): an index replica
            # that caught up); the others ask the overall one, which only loading sets.
            allowed = {"", READINESS_SERVICE} if kind == "readinessProbe" else {""}
            assert probe["grpc"].get("service", "") in allowed, f"{where}: {kind}: {probe['grpc']}"
        assert container["startupProbe"]["periodSeconds"] * \
            container["startupProbe"]["failureThreshold"] >= 300, f"{where}: startup under 5 min"
        # The Service in front of it exposes the same ports by name.
        labels = workload["spec"]["template"]["metadata"]["labels"]
        fronting = [s for s in services.values() if s["spec"]["selector"].items() <= labels.items()]
        assert len(fronting) == 1, f"{where}: {len(fronting)} Services select it"
        for port in fronting[0]["spec"]["ports"]:
            assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]], where
        # Shutdown: preStop sleep, then SIGTERM: drain_delay_s and shutdown_grace_s.
        pod = pod_spec(workload)
        sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        needed = sleep + settings.drain_delay_s + settings.shutdown_grace_s
        assert pod["terminationGracePeriodSeconds"] > needed, f"{where}: grace under {needed}s"
        assert settings.drain_delay_s > 0, f"{where}: no drain delay"
        # Hardened.
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert "requests" in container["resources"] and "limits" in container["resources"], where


def test_probed_services_serve_grpc_health() -> None:
    """Native gRPC probes ask grpc.health.v1 for the overall ("") status: every service
    module runs on the shared runtime, which registers the health service and sets ""."""
    import importlib

    from contentembed.services.common import server

    runtime = inspect.getsource(server.ServiceRuntime)
    assert "add_HealthServicer_to_server" in runtime and 'self.health.set("", status)' in runtime
    for module in service_classes():
        main = importlib.import_module(module + ".service").main
        assert "run_service(" in inspect.getsource(main), f"{module} does not use the runtime"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_shard_count_replicas_and_gateway_endpoints_agree(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contentembed.services.gateway.service import GatewaySettings
    from contentembed.services.index.service import IndexSettings

    objects = render(target)
    index = by_kind(objects, "StatefulSet")["index"]
    namespace, pods = index["metadata"]["namespace"], index["spec"]["replicas"]
    container = pod_spec(index)["containers"][0]
    env = env_of(container)
    shards, per_shard = int(env["CONTENTEMBED_SHARD_COUNT"]), int(env.get("CONTENTEMBED_REPLICAS_PER_SHARD", "1"))
    assert pods == shards * per_shard, f"{target}: {pods} pods for {shards} shards x {per_shard}"
    assert "--shard-index-from-hostname" in container["args"], target
    headless = by_kind(objects, "Service")[index["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    shard_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    for ordinal in range(pods):
        replica = parse_settings(IndexSettings, container, monkeypatch, f"index-{ordinal}")
        assert (replica.shard_index, replica.shard_count) == (ordinal // per_shard, shards)
        if per_shard == 1:
            assert replica.replica_id == "", target  # no replication: no lease, no peers
            continue
        assert replica.replica_id == str(ordinal % per_shard)
        assert replica.replica_lease == "kubernetes"
        first = ordinal - ordinal % per_shard
        peers = dict(entry.split("=", 1) for entry in replica.replica_peers)
        assert peers == {str(n): f"index-{first + n}.{headless['metadata']['name']}:{shard_port}"
                         for n in range(per_shard) if first + n != ordinal}, target
    gateway = by_kind(objects, "Deployment")["gateway"]
    settings = parse_settings(GatewaySettings, pod_spec(gateway)["containers"][0], monkeypatch)
    assert settings.index_endpoints == [
        "|".join(f"index-{shard * per_shard + n}.index.{namespace}.svc.cluster.local:{shard_port}"
                 for n in range(per_shard))
        for shard in range(shards)
    ], f"{target}: the gateway must list exactly the {shards} shards in order, with their replicas"
    services = by_kind(objects, "Service")
    for endpoint in settings.encoder_endpoints:
        host, port = endpoint.rsplit(":", 1)
        assert host in services, f"{target}: encoder endpoint {endpoint} is no Service"
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], endpoint
        assert host.endswith("-encoder"), endpoint


def test_prod_encoders_use_the_cuda_images_on_gpus() -> None:
    for name in ("text-encoder", "image-encoder"):
        workload = by_kind(render("prod"), "Deployment")[name]
        pod = pod_spec(workload)
        container = pod["containers"][0]
        assert container["image"].startswith(f"contentembed/{name}-cuda:")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(container)["CONTENTEMBED_DEVICE"] == "cuda"
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    for name in ("text-encoder", "image-encoder"):
        image = pod_spec(by_kind(render("dev"), "Deployment")[name])["containers"][0]["image"]
        assert image.startswith(f"contentembed/{name}:")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_autoscalers_and_disruption_budgets_cover_the_services(target: str) -> None:
    objects = render(target)
    deployments = by_kind(objects, "Deployment")
    for name, hpa in by_kind(objects, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, name
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], name
    assert set(by_kind(objects, "HorizontalPodAutoscaler")) == {"text-encoder", "image-encoder"}
    workloads = [*deployments.values(), *by_kind(objects, "StatefulSet").values()]
    for pdb in by_kind(objects, "PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        assert sum(selector <= w["spec"]["template"]["metadata"]["labels"].items()
                   for w in workloads) == 1, pdb["metadata"]["name"]
    assert len(by_kind(objects, "PodDisruptionBudget")) == len(workloads)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_network_policy_admits_only_the_gateway_and_the_build_job(target: str) -> None:
    objects = render(target)
    (policy,) = by_kind(objects, "NetworkPolicy").values()
    guarded = set(policy["spec"]["podSelector"]["matchExpressions"][0]["values"])
    assert guarded == {"text-encoder", "image-encoder", "index"}
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    callers = set(grpc_rule["from"][0]["podSelector"]["matchExpressions"][0]["values"])
    assert callers == {"gateway", "build"}
    build = by_kind(objects, "CronJob")["build"]
    assert build["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/component"] == "build"
    backend_ports = {
        c["ports"][0]["containerPort"] for w, c, _ in service_containers(objects)
        if w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] in guarded
    }
    assert {p["port"] for p in grpc_rule["ports"]} == backend_ports
    assert [p["port"] for p in metrics_rule["ports"]] == [METRICS_PORT]


# -- the shard lease's RBAC ------------------------------------------------------------------
# The verb each CoordinationV1Api method the lease calls needs.
LEASE_CALL_VERBS = {"read": "get", "list": "list", "create": "create", "replace": "update",
                    "patch": "patch", "delete": "delete"}


def lease_verbs_the_code_uses() -> set[str]:
    from contentembed.services.index import lease_k8s

    calls = set(re.findall(r"\.(\w+?)_namespaced_lease\(", inspect.getsource(lease_k8s)))
    assert calls, "lease_k8s calls no CoordinationV1Api method"
    assert calls <= LEASE_CALL_VERBS.keys(), calls
    return {LEASE_CALL_VERBS[c] for c in calls}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_index_pods_may_read_create_and_update_leases_and_nothing_else(target: str) -> None:
    objects = render(target)
    index = by_kind(objects, "StatefulSet")["index"]
    namespace, pod = index["metadata"]["namespace"], pod_spec(index)
    account = pod.get("serviceAccountName", "default")
    assert account != "default", f"{target}: the index pods run as the namespace's default account"
    assert account in by_kind(objects, "ServiceAccount"), f"{target}: no ServiceAccount {account}"
    # The client loads its in-cluster config from the mounted token.
    assert pod.get("automountServiceAccountToken", by_kind(objects, "ServiceAccount")[account]
                   .get("automountServiceAccountToken", True)) is True, target
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    roles = by_kind(objects, "Role")
    granted: set[tuple[str, str, str]] = set()
    for binding in by_kind(objects, "RoleBinding").values():
        bound = [s for s in binding["subjects"] if s["kind"] == "ServiceAccount" and s["name"] == account
                 and s.get("namespace", binding["metadata"]["namespace"]) == namespace]
        if not bound:
            continue
        assert binding["roleRef"]["kind"] == "Role", f"{target}: bound to a {binding['roleRef']['kind']}"
        role = roles[binding["roleRef"]["name"]]
        for rule in role["rules"]:
            assert not rule.get("resourceNames"), "resourceNames cannot restrict create"
            granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                        for v in rule["verbs"]}
    wanted = {("coordination.k8s.io", "leases", verb) for verb in lease_verbs_the_code_uses()}
    assert wanted == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    assert granted == wanted, f"{target}: the index's account may {sorted(granted)}"
    # No other pod runs as that account or mounts a token.
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "CronJob").values()]:
        other = pod_spec(workload)
        where = f"{target}: {workload['metadata']['name']}"
        assert other.get("serviceAccountName", "default") != account, where
        assert other.get("automountServiceAccountToken") is False, where


# -- secrets ---------------------------------------------------------------------------------
def test_dev_secret_has_every_key_the_pods_read_and_keys_that_fit_together() -> None:
    objects = render("dev")
    secrets = by_kind(objects, "Secret")
    import base64

    values = {}
    for workload in [*by_kind(objects, "Deployment").values(), *by_kind(objects, "StatefulSet").values(),
                     *by_kind(objects, "CronJob").values()]:
        for container in pod_spec(workload)["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{workload['metadata']['name']}: no Secret {ref['name']}"
                    data = secrets[ref["name"]]["data"]
                    assert ref["key"] in data, f"Secret {ref['name']} has no key {ref['key']}"
                    values[ref["key"]] = base64.b64decode(data[ref["key"]]).decode()
    internal = values["internal-api-keys"].split(",")
    assert values["downstream-api-key"] in internal
    assert values["build-api-key"] in internal and values["build-api-key"] in values["admin-api-keys"].split(",")
    # prod expects the Secret from the cluster (docs/deploy.md), never a generated one.
    assert not by_kind(render("prod"), "Secret")


# -- the build Job ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_build_job_slices_match_its_completions_and_the_cli(target: str) -> None:
    from contentembed.cli import main as cli
    from contentembed.cli.main import EXIT_SLICES_MISSING, EXIT_VERSION_EXISTS

    cron = by_kind(render(target), "CronJob")["build"]
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["template"]["spec"]["containers"]
    assert container["image"].startswith("contentembed/cli")
    env = env_of(container)
    assert int(env["SLICES"]) == job["completions"] == job["parallelism"], target
    script = container["args"][0]
    assert '--slice "${JOB_COMPLETION_INDEX}/${SLICES}"' in script
    assert script.index("--slice") < script.index("--merge") < script.index("contentembed publish")
    assert f'"$rc" -eq {EXIT_VERSION_EXISTS}' in script.split("--merge")[0]
    assert f'"$rc" -eq {EXIT_SLICES_MISSING}' in script.split("--merge")[1]
    # The variables the CLI reads (its source), and nothing else of ours.
    package = Path(inspect.getfile(cli)).parent.parent
    source = inspect.getsource(cli) + "".join(
        path.read_text() for folder in ("client", "pipeline") for path in (package / folder).glob("*.py")
    )
    for name in env:
        if name.startswith("CONTENTEMBED_"):
            assert f'"{name}"' in source, f"the CLI does not read {name}"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert script.count("/bundles/") >= 1 and "/bundles" in mounts
    claim = next(v for v in job["template"]["spec"]["volumes"] if v["name"] == mounts["/bundles"])
    pvc = by_kind(render(target), "PersistentVolumeClaim")[claim["persistentVolumeClaim"]["claimName"]]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# -- monitoring ------------------------------------------------------------------------------
def exported_metric_names() -> set[str]:
    """Every sample name the services expose, from their own metric objects."""
    from prometheus_client import CollectorRegistry

    from contentembed.services.common.metrics import RpcMetrics
    from contentembed.services.common.server import ServiceRuntime

    names: set[str] = set()
    scratch = Path(tempfile.mkdtemp())
    for settings_cls, service_cls in service_classes().values():
        registry = CollectorRegistry()
        fields = settings_cls.model_fields
        options: dict[str, object] = {"shard_count": 1} if "shard_count" in fields else {}
        if "replica_id" in fields:  # the replication metrics exist only with replicas
            options.update(replica_id="0", replica_peers=["1=127.0.0.1:1"], data_dir=scratch,
                           replica_lease_file=scratch / "lease.json")
        settings = settings_cls(**options)
        service = service_cls(settings, registry)
        try:
            ServiceRuntime(service, settings, registry)  # contentembed_service_state
            RpcMetrics(registry, service.name)  # what the runtime's interceptor observes
            for family in registry.collect():
                suffixes = {"counter": ["_total", "_created"],
                            "histogram": ["_bucket", "_count", "_sum", "_created"],
                            "summary": ["", "_count", "_sum", "_created"]}.get(family.type, [""])
                names.update(family.name + s for s in suffixes)
        finally:
            service.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return names


def queried_metrics(expressions: list[str]) -> set[str]:
    return set(re.findall(r"\bcontentembed_[a-z0-9_]+", " ".join(expressions)))


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert "contentembed_rpc_duration_seconds_bucket" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    expressions += [json.dumps(v.get("query", "")) for v in dashboard["templating"]["list"]]
    used = queried_metrics(expressions)
    for wanted in ("contentembed_rpc_duration_seconds_bucket", "contentembed_query_cache_lookups_total",
                   "contentembed_search_covered_queries_total", "contentembed_query_drift_psi",
                   "contentembed_sampled_recall_at_k_sum", "contentembed_shadow_overlap_at_k_sum"):
        assert wanted in used, f"the dashboard has no panel on {wanted}"
    assert 'code="RESOURCE_EXHAUSTED"' in " ".join(expressions)
    assert not used - exported, f"the dashboard queries metrics no service exports: {used - exported}"
    for target in sorted(TARGETS):
        (rule,) = by_kind(render(target), "PrometheusRule").values()
        alerts = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        unknown = queried_metrics(alerts) - exported
        assert not unknown, f"alerts query metrics no service exports: {unknown}"


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_service_monitor_scrapes_every_metrics_port_and_dashboard_ships(target: str) -> None:
    objects = render(target)
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"].items()
    scraped = [s for s in by_kind(objects, "Service").values()
               if selector <= s["metadata"].get("labels", {}).items()]
    assert sorted(s["metadata"]["name"] for s in scraped) == [
        "gateway", "image-encoder", "index", "text-encoder"]
    for endpoint in monitor["spec"]["endpoints"]:
        for service in scraped:
            ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            assert ports.get(endpoint["port"]) == METRICS_PORT, service["metadata"]["name"]
    (dashboard,) = [c for c in by_kind(objects, "ConfigMap").values()
                    if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert json.loads(dashboard["data"]["contentembed.json"]) == json.loads(DASHBOARD.read_text())
