"""deploy/ validated by real tools: compose files, Kubernetes manifests, the Dockerfile, the capacity model.

The tools come from `bash deploy/tools/install.sh` (the Makefile's test target runs it first). A
test fails when its tool is missing, unless install.sh recorded that the tool cannot be installed
on this machine (deploy-tools/unavailable.txt): then it skips with that reason. No stack is
started: no container engine runs here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET  # noqa: S405 - our own config files
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TOOLS = Path(os.environ.get("RUNSTREAM_CACHE") or REPO / ".cache") / "deploy-tools"
KUBERNETES_VERSION = "1.33.0"  # deploy/tools/install.sh KUBERNETES_VERSION
OVERLAYS = ("base", "keda", "hpa")
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")


def tool(name: str, *candidates: Path | str) -> str:
    """The tool's path; skip only where install.sh recorded it cannot be installed here."""
    for candidate in candidates or (name,):
        path = str(candidate) if Path(candidate).is_absolute() else shutil.which(str(candidate))
        if path and Path(path).exists():
            return path
    unavailable = TOOLS / "unavailable.txt"
    if unavailable.exists():
        for line in unavailable.read_text().splitlines():
            if line.split(":", 1)[0] in (name, *map(str, candidates)):
                pytest.skip(f"{name} cannot be installed on this machine: {line.split(':', 1)[1].strip()}")
    pytest.fail(f"{name} not found: run `bash deploy/tools/install.sh` (the Makefile's test target does)")


def run(*command: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def xml_root(path: Path) -> ET.Element:
    return ET.parse(path).getroot()  # noqa: S314 - the repository's own config files


def ok(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(result.args)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result.stdout


# ------------------------------------------------------------------------------------------------ compose


def compose_config(file: Path, env_file: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    compose = tool("docker-compose")
    args = [compose, "-f", str(file)] + (["--env-file", str(env_file)] if env_file else []) + ["config"]
    return yaml.safe_load(ok(run(*args, env=env)))


def test_compose_stack_config_is_valid_and_ordered() -> None:
    config = compose_config(DEPLOY / "compose" / "compose.yaml", DEPLOY / "compose" / ".env.example")
    services = config["services"]
    assert set(services) >= {"kafka", "clickhouse", "consumer", "monitor", "prometheus", "alertmanager", "grafana"}
    for name in ("consumer", "monitor"):
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy", name
        assert depends["clickhouse"]["condition"] == "service_healthy", name
        assert services[name]["build"]["context"] == str(REPO), "built from this repository's Dockerfile"
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    assert services["consumer"]["command"][:1] == ["consume"]
    assert "--listen" in services["consumer"]["command"]
    assert services["monitor"]["command"][:1] == ["monitor"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert any(str(DEPLOY / "grafana") in str(v) for v in services["grafana"]["volumes"])
    assert any(str(DEPLOY / "prometheus") in str(v) for v in services["prometheus"]["volumes"])
    for name, service in services.items():
        assert not str(service.get("image", "")).endswith(":latest"), f"{name}: pin the image"


def test_compose_stack_has_no_default_passwords() -> None:
    compose = tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if "PASSWORD" not in k}
    result = subprocess.run([compose, "-f", str(DEPLOY / "compose" / "compose.yaml"), "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert "PASSWORD" in result.stderr + result.stdout


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    promtool = tool("promtool")
    config = tmp_path / "prometheus.yml"
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", config)
    ok(run(promtool, "check", "config", "--syntax-only", str(config)))
    scraped = yaml.safe_load(config.read_text())["scrape_configs"]
    targets = {t for job in scraped for sc in job["static_configs"] for t in sc["targets"]}
    assert {"consumer:9108", "monitor:9109"} <= targets


# ------------------------------------------------------------------------------------- clickhouse cluster


def test_clickhouse_cluster_config() -> None:
    folder = DEPLOY / "clickhouse-cluster"
    compose_config(folder / "compose.yaml", env={"CLICKHOUSE_PASSWORD": "x", "CLICKHOUSE_CLUSTER_SECRET": "y"})
    cluster = xml_root(folder / "config.d" / "cluster.xml")
    shards = cluster.findall("./remote_servers/runstream/shard")
    assert len(shards) == 2
    for number, shard in enumerate(shards, start=1):
        assert shard.findtext("internal_replication") == "true"
        hosts = [replica.findtext("host") for replica in shard.findall("replica")]
        assert len(hosts) == 2
        for host in hosts:  # each replica's macros name its shard and itself
            macros = xml_root(folder / "macros" / f"{host}.xml")
            assert macros.findtext("macros/shard") == str(number)
            assert macros.findtext("macros/replica") == host
    keepers = [node.findtext("host") for node in cluster.findall("./zookeeper/node")]
    assert len(keepers) == 3
    for index, host in enumerate(keepers, start=1):
        keeper = xml_root(folder / "keeper" / f"{host}.xml")
        assert keeper.findtext("keeper_server/server_id") == str(index)
        assert len(keeper.findall("keeper_server/raft_configuration/server")) == 3


def test_cluster_ddl_matches_the_example_config() -> None:
    result = ok(run(sys.executable, "-m", "runstream.cli", "migrate", "--cluster", "runstream", "--print",
                    "--clickhouse", "http://ch-s1-r1:8123/runstream"))
    assert "ON CLUSTER `runstream`" in result
    assert "'{shard}'" in result or "{shard}" in result
    assert "{replica}" in result
    assert "ENGINE = Distributed('runstream', 'runstream', 'metric_points_local', cityHash64(run_id))" in result


# ----------------------------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    kustomize = tool("kustomize", TOOLS / "bin" / "kustomize")
    out = tmp_path_factory.mktemp("kubernetes")
    files = {}
    for overlay in OVERLAYS:
        path = out / f"{overlay}.yaml"
        path.write_text(ok(run(kustomize, "build", str(DEPLOY / "kubernetes" / overlay))))
        files[overlay] = path
    return files


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_manifests_pass_kubeconform(rendered: dict[str, Path]) -> None:
    kubeconform = tool("kubeconform", TOOLS / "bin" / "kubeconform")
    schemas = TOOLS / "k8s-schemas"
    if not (schemas / f"v{KUBERNETES_VERSION}-standalone-strict").is_dir():
        tool("k8s-schemas", schemas / f"v{KUBERNETES_VERSION}-standalone-strict")
    out = ok(run(kubeconform, "-strict", "-summary", "-kubernetes-version", KUBERNETES_VERSION,
                 "-schema-location", str(schemas) + "/{{ .NormalizedKubernetesVersion }}-standalone"
                 "{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json",
                 "-skip", ",".join(KEDA_KINDS), *map(str, rendered.values())))
    assert "Invalid: 0, Errors: 0" in out, out
    assert "Skipped: 2" in out, f"only the KEDA objects may be skipped (checked below):\n{out}"


def test_keda_objects_pass_keda_schemas(rendered: dict[str, Path]) -> None:
    node = tool("node")
    validator = DEPLOY / "tools" / "validate_keda.mjs"
    modules = TOOLS / "node" / "node_modules"
    if not (modules / "@kubernetes-models" / "keda").is_dir():
        tool("keda-schemas", modules / "@kubernetes-models" / "keda")
    script = TOOLS / "node" / validator.name  # ES modules resolve packages from the script's folder
    shutil.copy(validator, script)
    out = ok(run(node, str(script), str(rendered["keda"]), cwd=TOOLS / "node"))
    assert "2 checked, 0 invalid" in out, out


def test_consumer_scales_on_kafka_lag_with_an_hpa_fallback(rendered: dict[str, Path]) -> None:
    keda, hpa, base = objects(rendered["keda"]), objects(rendered["hpa"]), objects(rendered["base"])
    scaled = find(keda, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "runstream-consumer"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == find(base, "ConfigMap")["data"]["RUNSTREAM_GROUP"]
    auth = find(keda, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {ref["name"] for ref in auth["spec"]["secretTargetRef"]} == {"runstream-kafka-sasl"}
    fallback = find(hpa, "HorizontalPodAutoscaler")
    assert fallback["apiVersion"] == "autoscaling/v2"
    assert fallback["spec"]["scaleTargetRef"]["name"] == "runstream-consumer"
    assert not [d for d in keda if d["kind"] == "HorizontalPodAutoscaler"], "two autoscalers would fight"
    assert not [d for d in hpa if d["kind"] == "ScaledObject"]
    partitions = tomllib.loads(find(base, "ConfigMap")["data"]["consumer.toml"])["consumer"]["partitions"]
    assert scaled["spec"]["maxReplicaCount"] == fallback["spec"]["maxReplicas"] == partitions


def test_consumer_probes_resources_and_disruption_budget(rendered: dict[str, Path]) -> None:
    docs = objects(rendered["base"])
    for name in ("runstream-consumer", "runstream-monitor"):
        deployment = find(docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    consumer = find(docs, "Deployment", "runstream-consumer")
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= consumer["spec"]["template"]["metadata"]["labels"].items()


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|USERNAME|_USER$|CREDENTIAL", re.I)
SECRET_LITERAL = re.compile(r"(?i)(?<![a-z])(password|passwd|secret|token|api[_-]?key)\s*[:=]\s*['\"]?([^\s'\"#,}]+)")


def test_no_secret_values_inlined(rendered: dict[str, Path]) -> None:
    for overlay, path in rendered.items():
        docs = objects(path)
        assert not [d for d in docs if d["kind"] == "Secret"], f"{overlay}: Secrets are referenced, never shipped"
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                for var in container.get("env", []):
                    if SECRET_NAME.search(var["name"]):
                        assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
        text = path.read_text()
        for userinfo in re.findall(r"://([^/\s@]+)@", text):  # only references to the Secret's variables
            assert re.fullmatch(r"\$\(\w+\):\$\(\w+\)", userinfo), f"{overlay}: credentials in a URL: {userinfo}"
    literal_files = [*DEPLOY.glob("kubernetes/**/*.yaml"), *DEPLOY.glob("compose/*.y*ml"),
                     *DEPLOY.glob("clickhouse-cluster/**/*.*ml")]
    for file in literal_files:
        text = re.sub(r"\$\{[^}]*\}", "${}", file.read_text())  # compose interpolations are references
        for match in SECRET_LITERAL.finditer(text):
            value = match.group(2)
            allowed = value.startswith(("${", "$(")) or value in ("secretKeyRef", "secretTargetRef") \
                or match.group(0).lower().startswith(("secret:", "secrettargetref"))
            assert allowed, f"{file.relative_to(REPO)}: secret-like literal {match.group(0)!r}"
    # the compose example env file holds placeholders only
    for line in (DEPLOY / "compose" / ".env.example").read_text().splitlines():
        if SECRET_NAME.search(line.split("=", 1)[0]) and "PASSWORD" in line:
            assert line.split("=", 1)[1] == "change-me", line


# ------------------------------------------------------------------------------------------------- image


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", TOOLS / "venv" / "bin" / "hadolint")
    ok(run(hadolint, "--failure-threshold", "info", "Dockerfile"))


def test_image_is_non_root_and_pinned() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "-r deploy/requirements.lock" in dockerfile
    locked = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            locked[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the image runs the server side: the SDK's dependencies and the [server] extra's are all pinned
    for requirement in project["dependencies"] + project["optional-dependencies"]["server"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]).lower()
        assert name in locked, f"{name} (pyproject.toml) is not pinned in deploy/requirements.lock"
    ignored = (REPO / ".dockerignore").read_text()
    assert ignored.splitlines()[1:2] == ["*"] or "\n*\n" in ignored, ".dockerignore starts from nothing"


# ---------------------------------------------------------------------------------------------- capacity


def test_capacity_model_prints_the_three_fleets_with_sources() -> None:
    out = ok(run(sys.executable, str(REPO / "bench" / "capacity.py")))
    for fleet in ("1,000 GPUs", "10,000 GPUs", "100,000 GPUs"):
        assert fleet in out
    measured = out.split("## Measured inputs", 1)[1].split("## Per fleet", 1)[0]
    rows = [line for line in measured.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert len(rows) >= 7
    for row in rows:
        assert re.search(r"bench/\w+\.py", row), f"input without its benchmark: {row}"
    for label in ("events/s into Kafka", "bytes/s into Kafka", "partitions", "consumer processes to run",
                  "rows/day", "compressed bytes/day", "USD/month"):
        assert label in out
