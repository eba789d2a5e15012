"""deploy/: the compose stack, the Kubernetes manifests and the image's entrypoint.

There is no container engine where these tests run, so they check what can be checked without one:
every file parses, the services, images, ports, volumes, env and names they reference exist and agree
with each other, with gateway.yaml and with the Dockerfile, and the image's commands (the Dockerfile
CMD, and the command compose and Kubernetes run) start a gateway that answers and drains on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import load_config
from gateway.policy import validate_dir
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
DEMO_KEY = "sk-demo-rag-gateway"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _compose() -> dict[str, Any]:
    return _load(DEPLOY / "compose.yaml")[0]


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerfile_cmd() -> list[str]:
    cmds = [args for inst, args in _dockerfile() if inst == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    cmd = json.loads(cmds[-1])  # exec form: no shell between the runtime's SIGTERM and the gateway
    assert isinstance(cmd, list)
    return cmd


def _dockerfile_uid() -> int:
    runs = " ".join(args for inst, args in _dockerfile() if inst == "RUN")
    m = re.search(r"useradd\b[^&;]*--uid\s+(\d+)\s+(\w+)", runs)
    assert m, "the Dockerfile creates no user with a fixed uid"
    return int(m.group(1))


# ---------------------------------------------------------------------------------------------
# Every file


def test_every_yaml_file_in_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert {p.name for p in files} >= {
        "compose.yaml",
        "gateway.yaml",
        "kustomization.yaml",
        "deployment.yaml",
    }
    for path in files:
        assert _load(path), f"{path} is empty"


# ---------------------------------------------------------------------------------------------
# compose.yaml


def _published(service: dict[str, Any]) -> dict[int, int]:
    """published port -> container port, for the short and the long syntax."""
    out = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out[int(port["published"])] = int(port["target"])
            continue
        spec = str(port).split("/")[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {port!r} publishes nothing fixed"
        out[int(parts[-2])] = int(parts[-1])
    return out


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for each volume entry, short or long syntax."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            out.append((vol["source"], vol["target"]))
        else:
            parts = vol.split(":")
            out.append((parts[0], parts[1]))
    return out


def _gateway_mount(target: str) -> Path:
    for source, mount_target in _mounts(_compose()["services"]["gateway"]):
        if mount_target == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"nothing is mounted at {target} in the gateway service")


def test_compose_services_have_an_image_or_a_build_and_the_build_exists() -> None:
    services = _compose()["services"]
    assert {"gateway", "redis", "chroma", "jaeger"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"
        image = service.get("image", "")
        assert not image.endswith(":latest"), f"service {name}: pin the image tag"
    build = services["gateway"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()
    assert services["gateway"]["image"] == f"rag-gateway:{VERSION}"
    assert services["chroma"]["image"].startswith("chromadb/chroma:")
    assert services["jaeger"]["image"].startswith("jaegertracing/")
    assert services["redis"]["image"].startswith("redis:7")


def test_compose_runs_several_replicas_behind_one_published_port() -> None:
    services = _compose()["services"]
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] >= 2
    assert "ports" not in gateway, "replicas cannot share a published port: nginx publishes it"
    assert "container_name" not in gateway, "a fixed container name forbids replicas"
    assert _published(services["nginx"]) == {8080: 8080}


def test_compose_publishes_the_gateway_and_jaeger_ports() -> None:
    published: dict[int, int] = {}
    for service in _compose()["services"].values():
        published.update(_published(service))
    for port in (8080, 16686, 4317, 4318):
        assert port in published, f"port {port} is not published"
    assert {published[p] for p in (16686, 4317, 4318)} == {16686, 4317, 4318}


def test_compose_redis_persists_to_a_named_volume() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert _option(command, "--appendonly") == "yes"
    mounts = dict((target, source) for source, target in _mounts(redis))
    assert mounts.get("/data") in compose["volumes"], "redis /data must be a declared named volume"
    chroma = dict((target, source) for source, target in _mounts(compose["services"]["chroma"]))
    assert chroma.get("/data") in compose["volumes"], "chroma persists under /data"


DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rag-gateway.json"
# Words inside a PromQL expression that are not metric names.
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "clamp_min", "label_values",
    "le", "tenant", "status", "model", "type", "outcome", "stage", "rule", "kind", "action",
}  # fmt: skip


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _series_names(exposition: str) -> set[str]:
    """The series a /metrics page offers, from its TYPE lines (so also metrics not yet observed)."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    return names


def test_every_dashboard_query_names_a_metric_the_gateway_exposes(gateway: Any) -> None:
    exposition = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    offered = _series_names(exposition)
    assert "rag_gateway_requests_total" in offered
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("requests", "error", "latency", "first token", "tokens", "spend", "cache", "refusal",
                   "guardrail"):  # fmt: skip
        assert wanted in titles, f"the dashboard has no {wanted} panel"
    for expr in _dashboard_exprs():
        # Drop label values, range selectors and numbers (1e-9): what is left are functions and metrics.
        without_strings = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "", re.sub(r'"[^"]*"', "", expr))
        names = {
            word
            for word in re.findall(r"[a-z_][a-z0-9_]*", re.sub(r"\[[0-9a-z]+\]", "", without_strings))
            if word not in PROMQL_WORDS
        }
        assert names, expr
        assert names <= offered, f"{expr}: {sorted(names - offered)} not on /metrics"


def test_compose_provisions_prometheus_scraping_every_replica_and_grafana_with_the_dashboard() -> None:
    compose = _compose()
    services = compose["services"]
    prometheus = dict((target, source) for source, target in _mounts(services["prometheus"]))
    scrape = yaml.safe_load((DEPLOY / prometheus["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = scrape["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["gateway"] and job["metrics_path"] == "/metrics"
    assert discovery["port"] == load_config(DEPLOY / "gateway.yaml").server.port
    grafana = dict((target, source) for source, target in _mounts(services["grafana"]))
    provisioning = DEPLOY / grafana["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "rag-gateway.yaml").read_text())["providers"]
    dashboards = DEPLOY / grafana[provider["options"]["path"]]
    assert (dashboards / DASHBOARD.name).is_file()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {p["datasource"]["uid"] for p in panels} == {datasource["uid"]}


def test_compose_volumes_and_depends_on_reference_things_that_exist() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in _mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target!r}"
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount source {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            if isinstance(env_file, dict) and env_file.get("required") is False:
                assert (DEPLOY / (path + ".example")).is_file(), f"{name}: no {path}.example to copy"
            else:
                assert (DEPLOY / path).is_file()


def test_compose_gateway_config_exists_validates_and_names_compose_services() -> None:
    services = _compose()["services"]
    gateway = services["gateway"]
    command = gateway["command"]
    config_path = _gateway_mount(_option(command, "--config"))
    assert config_path == DEPLOY / "gateway.yaml"
    config = load_config(config_path)
    assert _option(command, "--port") == str(config.server.port)
    assert _option(command, "--host") == config.server.host == "0.0.0.0"
    assert config.server.admin_key_env == "RAG_GATEWAY_ADMIN_KEY"

    # Where the config expects its policies (relative to its mount point) is where they are mounted.
    container_config = PurePosixPath(_option(command, "--config"))
    assert config.policies_dir
    policies_target = str(container_config.parent / config.policies_dir)
    policies_source = _gateway_mount(policies_target)
    assert policies_source == ROOT / "policies"
    policies, problems = validate_dir(policies_source)
    assert policies and not problems

    # The backends the config names are services of this stack.
    assert re.fullmatch(r"redis://redis:6379/\d+", config.state)
    assert config.vector_store.url == "http://chroma:8000"
    assert config.telemetry.otlp_endpoint == "http://jaeger:4317"
    env = gateway["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == config.telemetry.otlp_endpoint
    assert env["OTEL_SERVICE_NAME"] == config.telemetry.service_name == "rag-gateway"

    # The OpenAI model, with the built-in models as fallback and for embeddings.
    gpt = config.model("gpt-4o-mini")
    assert gpt and gpt.deployments[0].provider == "openai"
    assert gpt.deployments[0].api_key_env == "OPENAI_API_KEY"
    assert gpt.fallbacks == ["local-extractive"]
    minilm = config.model("local-minilm")
    assert minilm and minilm.mode == "embedding"


def test_env_example_documents_every_secret_and_holds_none() -> None:
    config = load_config(DEPLOY / "gateway.yaml")
    names = {d.api_key_env for m in config.models for d in m.deployments if d.api_key_env}
    names.add(config.server.admin_key_env)
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert names <= set(values), f"undocumented: {names - set(values)}"
    for key, value in values.items():
        assert value == "" or "REPLACE" in value, f".env.example: {key} looks like a real secret"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_healthchecks_hit_healthz() -> None:
    services = _compose()["services"]
    gateway_check = " ".join(services["gateway"]["healthcheck"]["test"])
    port = _option(services["gateway"]["command"], "--port")
    assert f"127.0.0.1:{port}/healthz" in gateway_check
    assert "/healthz" in " ".join(services["nginx"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    # SIGTERM drains for drain_timeout_s: compose must wait longer before it kills the replica.
    grace = services["gateway"]["stop_grace_period"]
    assert (
        grace.endswith("s")
        and float(grace[:-1]) > load_config(DEPLOY / "gateway.yaml").server.drain_timeout_s
    )


def test_nginx_conf_balances_the_replicas_and_streams_unbuffered() -> None:
    services = _compose()["services"]
    mounts = {target: (DEPLOY / source).resolve() for source, target in _mounts(services["nginx"])}
    conf_path = mounts["/etc/nginx/nginx.conf"]
    assert conf_path == DEPLOY / "nginx.conf"
    conf = re.sub(r"#.*", "", conf_path.read_text())
    gateway_port = _option(services["gateway"]["command"], "--port")
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream, "no upstream block"
    assert re.search(rf"\bserver\s+gateway:{gateway_port}\b", upstream.group(2)), (
        "upstream misses the replicas"
    )
    assert re.search(r"\bkeepalive\s+\d+;", upstream.group(2))
    assert re.search(rf"proxy_pass\s+http://{upstream.group(1)};", conf)
    assert re.search(r"\blisten\s+8080;", conf)
    assert re.search(r"\bproxy_buffering\s+off;", conf)
    assert re.search(r"\bproxy_http_version\s+1\.1;", conf)
    assert re.search(r'\bproxy_set_header\s+Connection\s+"";', conf)
    read_timeout = re.search(r"\bproxy_read_timeout\s+(\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) >= 300
    body = re.search(r"\bclient_max_body_size\s+(\d+)m;", conf)
    max_body = load_config(DEPLOY / "gateway.yaml").server.max_body_bytes
    assert body and int(body.group(1)) * 1024 * 1024 >= max_body


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _deployment() -> dict[str, Any]:
    return _manifests()[("Deployment", "rag-gateway")]


def _container() -> dict[str, Any]:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    return container


def _container_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in _container()["ports"]:
        if p["name"] == port:
            return int(p["containerPort"])
    raise AssertionError(f"no container port named {port}")


def test_k8s_manifests_are_named_and_kustomization_lists_every_file() -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in files:
        for doc in _load(K8S / name):
            assert doc.get("apiVersion") and doc.get("kind"), name
            assert doc.get("metadata", {}).get("name"), name
            assert "namespace" not in doc["metadata"], f"{name}: manifests are namespace-less"
    kustomization = _load(K8S / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == files
    kinds = {kind for kind, _ in _manifests()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_every_manifest() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert rendered == set(_manifests())


def test_k8s_deployment_command_image_and_probes() -> None:
    deployment = _deployment()
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 3
    container = _container()
    assert container["image"] == f"rag-gateway:{VERSION}"
    command = container["command"]
    assert command[:2] == ["rag-gateway", "serve"]
    port = int(_option(command, "--port"))
    assert _option(command, "--host") == "0.0.0.0"
    assert _option(command, "--config") == "/etc/rag-gateway/gateway.yaml"
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert _container_port(get["port"]) == port, probe
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert _mebibytes(resources["requests"]["memory"]) >= 300
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def _mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi|M|G)", quantity)
    assert m, quantity
    factor = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[m.group(2)]
    return int(m.group(1)) * factor


def test_k8s_security_context_matches_the_dockerfile_user() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == _dockerfile_uid()
    container_security = _container()["securityContext"]
    assert container_security["allowPrivilegeEscalation"] is False
    if container_security.get("readOnlyRootFilesystem"):
        mounted = {m["mountPath"] for m in _container()["volumeMounts"]}
        assert "/tmp" in mounted, "a read-only root filesystem needs a writable /tmp"


def test_k8s_termination_outlasts_prestop_and_drain() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    pre_stop = _container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep"
        sleep_s = float(command[1])
    assert sleep_s >= 5, "the endpoint needs a few seconds to leave every load balancer"
    drain = _k8s_config().server.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] > sleep_s + drain


def _k8s_config_text() -> str:
    return _manifests()[("ConfigMap", "rag-gateway-config")]["data"]["gateway.yaml"]


def _k8s_config(tmp: Path | None = None) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(tmp or d) / "gateway.yaml"
        path.write_text(_k8s_config_text())
        return load_config(path)


def test_k8s_configmaps_and_secret_referenced_by_the_deployment_exist_and_validate(tmp_path: Path) -> None:
    manifests = _manifests()
    pod = _deployment()["spec"]["template"]["spec"]
    container = _container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in manifests
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in manifests
    secret_names = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    secret_names += [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert secret_names
    for name in secret_names:
        assert ("Secret", name) in manifests

    # gateway.yaml: mounted where --config points, valid, and its policies_dir is the policies mount.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_mount = mounts[_option(container["command"], "--config")]
    config_map = manifests[("ConfigMap", volumes[config_mount["name"]]["configMap"]["name"])]
    assert config_mount["subPath"] in config_map["data"]
    config = _k8s_config(tmp_path)
    assert config.policies_dir
    assert config.server.port == int(_option(container["command"], "--port"))
    assert config.server.admin_key_env
    policies_mount = mounts[str(PurePosixPath(config_mount["mountPath"]).parent / config.policies_dir)]
    policies_map = manifests[("ConfigMap", volumes[policies_mount["name"]]["configMap"]["name"])]
    assert "subPath" not in policies_mount, "a subPath mount never sees ConfigMap updates"

    # The policies ConfigMap holds a valid policies folder.
    folder = tmp_path / "policies"
    folder.mkdir()
    for name, text in policies_map["data"].items():
        (folder / name).write_text(text)
    policies, problems = validate_dir(folder)
    assert policies and not problems, problems

    # The Secret carries every key the config names, as placeholders.
    secret = manifests[("Secret", secret_names[0])]
    keys = {d.api_key_env for m in config.models for d in m.deployments if d.api_key_env}
    keys.add(config.server.admin_key_env)
    assert keys <= set(secret["stringData"])
    assert all("REPLACE" in v for v in secret["stringData"].values())

    # OTEL env and the config agree on where traces go.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == config.telemetry.otlp_endpoint
    assert env["OTEL_SERVICE_NAME"] == config.telemetry.service_name


def test_k8s_service_targets_the_container_port() -> None:
    service = _manifests()[("Service", "rag-gateway")]
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port = int(_option(_container()["command"], "--port"))
    (service_port,) = service["spec"]["ports"]
    assert _container_port(service_port["targetPort"]) == port


def test_k8s_hpa_and_pdb_target_the_deployment() -> None:
    manifests = _manifests()
    hpa = manifests[("HorizontalPodAutoscaler", "rag-gateway")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _deployment()["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"] if m["type"] == "Resource")
    assert _container()["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    for kind, doc in manifests.items():
        if kind[0] == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
            assert doc["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_slim_non_root_healthcheck_and_cmd_matching_the_deployment() -> None:
    instructions = _dockerfile()
    bases = [args.split()[0] for inst, args in instructions if inst == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.\d+-slim(-\w+)?", b) for b in bases), bases
    users = [args for inst, args in instructions if inst == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    healthchecks = [args for inst, args in instructions if inst == "HEALTHCHECK"]
    assert healthchecks and "/healthz" in healthchecks[-1]
    exposed = [args for inst, args in instructions if inst == "EXPOSE"]

    cmd = _dockerfile_cmd()
    k8s = _container()["command"]
    compose = _compose()["services"]["gateway"]["command"]
    assert cmd[:2] == k8s[:2] == compose[:2] == ["rag-gateway", "serve"]
    for flag in ("--host", "--port"):
        assert _option(cmd, flag) == _option(k8s, flag) == _option(compose, flag), flag
    port = _option(cmd, "--port")
    assert exposed and port in exposed[-1].split()
    assert f"127.0.0.1:{port}/healthz" in healthchecks[-1]


# ---------------------------------------------------------------------------------------------
# The image's commands, run directly


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", PYTHONUNBUFFERED="1")
    env.pop("RAG_GATEWAY_CONFIG", None)
    return env


def _executable(argv: list[str]) -> list[str]:
    """The image has rag-gateway on PATH; here it is next to this interpreter."""
    local = Path(sys.executable).parent / argv[0]
    return [str(local) if local.exists() else argv[0], *argv[1:]]


def _serve_then_sigterm(argv: list[str], cwd: Path, port: int, check: Any) -> None:
    proc = subprocess.Popen(
        _executable(argv), cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{argv} exited {proc.returncode}:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{argv}: /healthz never answered"
            time.sleep(0.2)
        check(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dockerfile_cmd_serves_healthz_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    # The image's working directory /app holds policies/ and samples/; the CMD runs from there.
    app = tmp_path / "app"
    app.mkdir()
    shutil.copytree(ROOT / "policies", app / "policies")
    port = free_port()
    cmd = _dockerfile_cmd()
    cmd[cmd.index("--port") + 1] = str(port)
    # --host 0.0.0.0 as in the image: the probe below reaches it on loopback.

    def check(url: str) -> None:
        # Ready once the demo's seed corpus is ingested, in the background after start-up.
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "/readyz never became ready"
            time.sleep(0.2)

    _serve_then_sigterm(cmd, app, port, check)


def test_deployment_command_serves_the_deploy_config_and_policies(tmp_path: Path) -> None:
    """The Kubernetes (and compose) command on the shipped config, with its external backends
    (Redis, the Chroma server, the OTLP collector) swapped for local ones, and the repo's policies."""
    raw = yaml.safe_load(_k8s_config_text())
    raw["state"] = "memory"
    raw["vector_store"] = {"path": str(tmp_path / "chroma")}
    raw["telemetry"].pop("otlp_endpoint", None)
    raw["policies_dir"] = str(ROOT / "policies")
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    port = free_port()
    cmd = list(_container()["command"])
    cmd[cmd.index("--config") + 1] = str(config_path)
    cmd[cmd.index("--port") + 1] = str(port)
    policies, _ = validate_dir(ROOT / "policies")

    def check(url: str) -> None:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["policies"]["tenants"] == len(policies)
        headers = {"Authorization": f"Bearer {DEMO_KEY}", "x-request-id": "deploy-test-1"}
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "local-extractive", "messages": [{"role": "user", "content": "hello"}]},
            headers=headers,
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-request-id"] == "deploy-test-1"

    _serve_then_sigterm(cmd, tmp_path, port, check)


def test_the_journal_and_the_files_live_on_volumes_in_compose_and_kubernetes() -> None:
    """Both are written at run time: on a read-only or per-container path they would be lost."""
    compose_config = load_config(DEPLOY / "gateway.yaml")
    mounts = {target: source for source, target in _mounts(_compose()["services"]["gateway"])}
    for folder in (compose_config.ledger.journal_dir, compose_config.files.dir):
        assert mounts.get(folder) in _compose()["volumes"], f"compose: {folder} is not a named volume"
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    configmap = _manifests()[("ConfigMap", "rag-gateway-config")]
    k8s_config = yaml.safe_load(configmap["data"]["gateway.yaml"])
    for folder in (k8s_config["ledger"]["journal_dir"], k8s_config["files"]["dir"]):
        assert folder in mounted, f"kubernetes: {folder} is not a mounted volume"
