"""Every scale-out manifest validates against its schema, offline, and the files agree with each other.

Built-in Kubernetes kinds are checked by `kubernetes-validate` (it ships the API schemas of each
release) in strict mode; KEDA, Gateway API, Envoy Gateway and Prometheus Operator resources and the
prometheus-adapter configuration against the schemas committed in deploy/schemas/ (sources and
versions in its README). Nothing is fetched. Then what no schema can see: the autoscaler targets the
Deployment, its thresholds are the ones the scale-out simulation chose
(benchmarks/results/scaleout.json), the grace periods cover the drain bound, the route timeout
covers the server's own timeouts, and the balancer is the outstanding-requests kind.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
from helpers import REPO_ROOT

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
kv_utils = pytest.importorskip("kubernetes_validate.utils")

from enhancer.config import Settings  # noqa: E402

ROOT = REPO_ROOT
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
#: Oldest and newest Kubernetes release the manifests are checked against.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("gateway.networking.k8s.io/v1", "GatewayClass"): "gateway.networking.k8s.io_v1_gatewayclass.json",
    ("gateway.networking.k8s.io/v1", "Gateway"): "gateway.networking.k8s.io_v1_gateway.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_v1_httproute.json",
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): "gateway.envoyproxy.io_v1alpha1_backendtrafficpolicy.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
}
ADAPTER_SCHEMA = "prometheus-adapter_v0.12.0_config.json"

MANIFESTS = [
    "kubernetes.yaml",
    "kubernetes-cpu.yaml",
    "autoscaling/keda-cpu.yaml",
    "autoscaling/keda-gpu.yaml",
    "autoscaling/hpa-cpu.yaml",
    "autoscaling/hpa-gpu.yaml",
    "autoscaling/prometheus-adapter.yaml",
    "autoscaling/podmonitor.yaml",
    "gateway/envoy-gateway.yaml",
]


def docs_of(relpath: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / relpath).read_text()) if d]


def one(relpath: str, kind: str) -> dict:
    (doc,) = [d for d in docs_of(relpath) if d["kind"] == kind]
    return doc


def validate(doc: dict) -> None:
    """Raise if `doc` does not validate; built-in kinds on every release in K8S_VERSIONS."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text())
        jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
        return
    for version in K8S_VERSIONS:
        kv_utils.validate(doc, version, strict=True)


def adapter_config() -> dict:
    cm = one("autoscaling/prometheus-adapter.yaml", "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


def validate_adapter(config: dict) -> None:
    schema = json.loads((SCHEMAS / ADAPTER_SCHEMA).read_text())
    jsonschema.validate(config, schema, cls=jsonschema.Draft7Validator)


@pytest.fixture(scope="module")
def scaleout():
    return json.loads((ROOT / "benchmarks" / "results" / "scaleout.json").read_text())


def _params():
    for relpath in MANIFESTS:
        for i, doc in enumerate(docs_of(relpath)):
            yield pytest.param(doc, id=f"{relpath}#{i}:{doc['kind']}")


# ------------------------------------------------------------------------------------- schemas
@pytest.mark.parametrize("doc", list(_params()))
def test_manifest_validates_against_its_schema(doc):
    validate(doc)


def test_every_yaml_under_deploy_is_covered():
    found = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml")}
    assert found == set(MANIFESTS), "a new manifest must be added to MANIFESTS (and so validated)"


def test_prometheus_adapter_config_validates():
    validate_adapter(adapter_config())


def test_schemas_are_the_committed_files_named_in_the_readme():
    readme = (SCHEMAS / "README.md").read_text()
    for name in [*CRD_SCHEMAS.values(), ADAPTER_SCHEMA]:
        assert (SCHEMAS / name).is_file()
        assert f"`{name}`" in readme, f"{name}: source and version must be named in deploy/schemas/README.md"


# a deliberate mistake in each kind of file must be caught: the validation is not a rubber stamp
def _typo_deployment(doc):
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")


def _typo_scaledobject(doc):
    doc["spec"]["minReplicas"] = doc["spec"].pop("minReplicaCount")


def _wrong_enum_btp(doc):
    doc["spec"]["loadBalancer"]["type"] = "LeastRequests"


def _typo_httproute(doc):
    doc["spec"]["rules"][0]["timeout"] = doc["spec"]["rules"][0].pop("timeouts")


def _typo_hpa(doc):
    doc["spec"]["metrics"][0]["pods"]["target"]["averageValues"] = doc["spec"]["metrics"][0]["pods"]["target"].pop("averageValue")


def _typo_podmonitor(doc):
    doc["spec"]["podMetricsEndpoint"] = doc["spec"].pop("podMetricsEndpoints")


def _wrong_type_pdb(doc):
    doc["spec"]["maxUnavailable"] = [1]


@pytest.mark.parametrize("relpath, kind, mistake", [
    ("kubernetes-cpu.yaml", "Deployment", _typo_deployment),
    ("kubernetes.yaml", "PodDisruptionBudget", _wrong_type_pdb),
    ("autoscaling/keda-cpu.yaml", "ScaledObject", _typo_scaledobject),
    ("autoscaling/hpa-gpu.yaml", "HorizontalPodAutoscaler", _typo_hpa),
    ("gateway/envoy-gateway.yaml", "BackendTrafficPolicy", _wrong_enum_btp),
    ("gateway/envoy-gateway.yaml", "HTTPRoute", _typo_httproute),
    ("autoscaling/podmonitor.yaml", "PodMonitor", _typo_podmonitor),
])
def test_a_wrong_field_fails_validation(relpath, kind, mistake):
    doc = copy.deepcopy(one(relpath, kind))
    validate(doc)  # fine as committed
    mistake(doc)
    with pytest.raises(Exception) as info:
        validate(doc)
    assert "ValidationError" in type(info.value).__name__


def test_a_wrong_key_in_the_adapter_config_fails():
    config = adapter_config()
    config["rules"][0]["seriesQueries"] = config["rules"][0].pop("seriesQuery")
    with pytest.raises(jsonschema.ValidationError):
        validate_adapter(config)


# ------------------------------------------------------------------------------- consistency
def _env(container) -> dict:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _setting(env: dict, field: str) -> float:
    name = f"ENHANCER_{field.upper()}"
    return float(env[name]) if name in env else float(Settings.model_fields[field].default)


@pytest.mark.parametrize("relpath", ["kubernetes.yaml", "kubernetes-cpu.yaml"])
def test_grace_period_covers_prestop_plus_drain(relpath):
    pod = one(relpath, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = _setting(_env(container), "shutdown_timeout_s")
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10


def test_cpu_drain_bound_is_one_the_simulation_found_loses_nothing(scaleout):
    (container,) = one("kubernetes-cpu.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    drain = _setting(_env(container), "shutdown_timeout_s")
    runs = scaleout["drain_cpu"]
    killed = {float(k): v["by_status"].get("503 killed at scale-down", 0) for k, v in runs.items()}
    assert drain in killed, f"simulate ENHANCER_SHUTDOWN_TIMEOUT_S={drain:g} before shipping it"
    assert killed[drain] == 0
    shorter = [k for k in killed if k < drain]
    assert shorter and all(killed[k] > 0 for k in shorter), "a shorter bound that also loses nothing would do"


@pytest.mark.parametrize("relpath", ["kubernetes.yaml", "kubernetes-cpu.yaml"])
def test_pods_spread_over_nodes_and_a_budget_keeps_replicas_up(relpath):
    deployment, pdb = one(relpath, "Deployment"), one(relpath, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in spread:
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_gpu_variant_lands_on_gpu_nodes_and_cpu_variant_asks_for_none():
    gpu = one("kubernetes.yaml", "Deployment")["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert int(gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) == 1
    cpu = one("kubernetes-cpu.yaml", "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    (container,) = cpu["containers"]
    # the simulated CPU replica is the measured 2-core machine: request and TF threads match it
    assert container["resources"]["requests"]["cpu"] == "2"
    assert _env(container)["ENHANCER_INTRA_OP_THREADS"] == "2"


def _quantity(q) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMG]?)", str(q))
    assert m, f"unexpected quantity {q!r}"
    return float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_keda_scales_the_deployment_on_pixels_in_flight_at_the_simulated_threshold(variant, scaleout):
    so = one(f"autoscaling/keda-{variant}.yaml", "ScaledObject")
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "enhancer"}
    assert spec["minReplicaCount"] >= 2  # with the PDB's maxUnavailable 1, one stays up in a drain
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"  # the query's sum is divided by the replicas
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith("http")
    assert re.fullmatch(r"sum\(enhancer_pixels_in_flight\{.*\}\)", meta["query"].strip())
    chosen = scaleout[f"chosen_{variant}"]["target_mp"]
    assert float(meta["threshold"]) == chosen * 1e6
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300  # as simulated
    assert spec["pollingInterval"] == 15


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_hpa_alternative_uses_the_adapter_metric_at_the_same_threshold(variant, scaleout):
    hpa = one(f"autoscaling/hpa-{variant}.yaml", "HorizontalPodAutoscaler")
    so = one(f"autoscaling/keda-{variant}.yaml", "ScaledObject")
    assert hpa["spec"]["scaleTargetRef"]["name"] == so["spec"]["scaleTargetRef"]["name"]
    assert hpa["spec"]["minReplicas"] == so["spec"]["minReplicaCount"]
    assert hpa["spec"]["maxReplicas"] == so["spec"]["maxReplicaCount"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    names = {r["name"]["as"] for r in adapter_config()["rules"]}
    assert metric["pods"]["metric"]["name"] in names
    assert metric["pods"]["metric"]["name"] == "enhancer_pixels_in_flight"
    assert _quantity(metric["pods"]["target"]["averageValue"]) == scaleout[f"chosen_{variant}"]["target_mp"] * 1e6
    assert hpa["spec"]["behavior"] == so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]


def test_adapter_rules_map_series_to_pods():
    for rule in adapter_config()["rules"]:
        overrides = rule["resources"]["overrides"]
        assert overrides["namespace"]["resource"] == "namespace"
        assert overrides["pod"]["resource"] == "pod"
        assert re.search(rule["name"]["matches"], rule["name"]["as"])
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_podmonitor_scrapes_the_pods_named_port():
    pm = one("autoscaling/podmonitor.yaml", "PodMonitor")
    for relpath in ["kubernetes.yaml", "kubernetes-cpu.yaml"]:
        template = one(relpath, "Deployment")["spec"]["template"]
        assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        (endpoint,) = pm["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def _seconds(value: str) -> float:
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h)", value):
        total += float(number) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def test_gateway_balances_by_outstanding_requests_and_outlasts_the_server_timeouts():
    route = one("gateway/envoy-gateway.yaml", "HTTPRoute")
    policy = one("gateway/envoy-gateway.yaml", "BackendTrafficPolicy")
    gateway = one("gateway/envoy-gateway.yaml", "Gateway")
    gclass = one("gateway/envoy-gateway.yaml", "GatewayClass")
    assert gateway["spec"]["gatewayClassName"] == gclass["metadata"]["name"]
    assert gclass["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    assert route["spec"]["parentRefs"] == [{"name": gateway["metadata"]["name"]}]
    (rule,) = route["spec"]["rules"]
    service = one("kubernetes.yaml", "Service")
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    server_bound = Settings.model_fields["request_read_timeout_s"].default + Settings.model_fields["request_timeout_s"].default
    assert _seconds(rule["timeouts"]["request"]) > server_bound
    assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                            "name": route["metadata"]["name"]}]
    assert policy["spec"]["loadBalancer"] == {"type": "LeastRequest"}
    assert _seconds(policy["spec"]["timeout"]["http"]["streamIdleTimeout"]) > _seconds(rule["timeouts"]["request"])


#: Traefik v3.6's load-balancing strategies (pkg/config/dynamic/http_config.go, BalancerStrategy*).
TRAEFIK_STRATEGIES = {"wrr", "p2c", "hrw", "leasttime"}


def test_compose_balancer_uses_traefik_p2c():
    compose = yaml.safe_load((DEPLOY / "compose.lb.yml").read_text())
    lb, app = compose["services"]["lb"], compose["services"]["enhancer"]
    labels = dict(label.split("=", 1) for label in app["labels"])
    strategies = {k: v for k, v in labels.items() if k.endswith(".loadbalancer.strategy")}
    assert strategies == {"traefik.http.services.enhancer.loadbalancer.strategy": "p2c"}
    assert set(strategies.values()) <= TRAEFIK_STRATEGIES
    major, minor = (int(x) for x in lb["image"].split(":v")[1].split(".")[:2])
    assert (major, minor) >= (3, 4)  # p2c appeared in Traefik v3.4.0
