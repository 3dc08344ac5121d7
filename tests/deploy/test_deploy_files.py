"""The deployment files in deploy/, checked offline: Kubernetes manifests against the API schemas of a pinned
Kubernetes version (kubernetes-validate), the kustomization rendered by kubectl where it is installed, image tags
against the package's version, the compose file's wiring, the systemd unit with systemd-analyze, and the Grafana
dashboard's queries against the metrics a running cluster exports.

None of this reaches a Kubernetes API server or a registry: the manifests and the compose file were not applied to
a live cluster here (the Docker tests in tests/docker run the agent's Docker runtime against a real dockerd).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from notebookos.server_extension.api.metrics import ClusterMetrics

from ..kernels.driver import cluster_request

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
NOT_OBJECTS = {"kustomization.yaml", "jupyterhub-values.yaml"}  # kustomize's and the Hub chart's, not API objects
VERSION = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["version"]


def _manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name not in NOT_OBJECTS)


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid_api_objects(path: Path) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert document["metadata"].get("namespace", "notebookos") == "notebookos"


def test_the_kustomization_lists_every_manifest_and_renders() -> None:
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in _manifests()]
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: the kustomization was not rendered")
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {"Namespace", "Secret", "Deployment", "DaemonSet", "Service", "Role", "RoleBinding"} <= set(kinds)


def test_every_notebookos_image_is_this_version() -> None:
    texts = [p.read_text() for p in [*KUBERNETES.glob("*.yaml"), DEPLOY / "compose.yaml"]]
    tags = {tag for text in texts for tag in re.findall(r"\bnotebookos:([\w.-]+)", text)}
    hub = yaml.safe_load((KUBERNETES / "jupyterhub-values.yaml").read_text())["singleuser"]["image"]
    assert hub["name"] == "notebookos"
    assert tags and {tag.removesuffix("-cuda") for tag in tags | {hub["tag"]}} == {VERSION}, tags


def test_the_agents_join_over_tls_with_the_secret_token_and_advertise_their_node() -> None:
    for name in ("agents.yaml", "agent-pool.yaml"):
        [workload] = _documents(KUBERNETES / name)
        pod = workload["spec"]["template"]["spec"]
        [agent] = pod["containers"]
        assert pod["hostNetwork"] is True, "replicas bind the node's address"
        assert agent["args"][0] == "agent"
        assert {
            "--address=$(NODE_IP)",
            "--join=https://notebookos-cluster.notebookos.svc:8765",
            "--join-token-file=/etc/notebookos/join-token",
            "--cluster-ca=/etc/notebookos/ca/ca.pem",
        } <= set(agent["args"])
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
        assert secrets[mounts["/etc/notebookos/join-token"]]["secretName"] == "notebookos-join-token"
        ca = secrets[mounts["/etc/notebookos/ca"]]
        assert ca["secretName"] == "notebookos-cluster-ca" and ca["items"] == [{"key": "ca.pem", "path": "ca.pem"}], (
            "agents get the CA's certificate, not its key"
        )
    [cluster, _service] = _documents(KUBERNETES / "cluster.yaml")
    [lab] = cluster["spec"]["template"]["spec"]["containers"]
    assert {"--tls-auto", "--tls-ca=/etc/notebookos/ca", "--tls-name=notebookos-cluster.notebookos.svc"} <= set(
        lab["args"]
    )


def test_the_compose_cluster_wires_three_agents_to_the_service_over_tls() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    agents = [s for name, s in services.items() if name.startswith("agent-")]
    assert len(agents) == 3
    lab = services["lab"]["command"][0]
    assert "--listen 0.0.0.0:8765 --tls-auto" in lab and "/run/secrets/join_token" in lab
    assert services["lab"]["secrets"] == ["join_token"] and "join_token" in compose["secrets"]
    for agent in agents:
        assert "--join https://lab:8765 --join-token-file /home/notebookos/cluster/join-token" in agent["command"][0]
        assert "cluster-state:/home/notebookos/cluster:ro" in agent["volumes"], "the token file that pins the CA"
        assert agent["depends_on"]["lab"]["condition"] == "service_healthy"
        assert "notebooks:/home/notebookos/work" in agent["volumes"], "the storage every host sees"
    assert services["lab"]["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DEPLOY.parent / services["lab"]["build"]["dockerfile"]).is_file()
    assert services["redis"]["profiles"] == ["redis"]


def test_the_systemd_unit_is_valid(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    notebookos = Path(sys.executable).with_name("notebookos")  # this environment's command, installed with it
    unit = tmp_path / "notebookos-agent.service"
    unit.write_text(
        (DEPLOY / "systemd" / "notebookos-agent.service")
        .read_text()
        .replace("/usr/local/bin/notebookos", str(notebookos))
    )
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


def test_the_grafana_dashboard_queries_only_metrics_the_product_exports(cluster_file: str) -> None:
    """The metric names in every panel's query are among those a running cluster service and the Jupyter
    extension export (the extension's gauges built from the same cluster's answer)."""
    exported = {
        sample.name
        for family in text_string_to_metric_families(cluster_request(cluster_file, "GET", "/metrics", text=True))
        for sample in family.samples
    }
    extension = ClusterMetrics()
    extension.update(cluster_request(cluster_file, "GET", "/cluster"))
    exported |= {family.name for family in extension.collect()}
    dashboard = json.loads((DEPLOY / "grafana" / "notebookos-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bnotebookos_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exported, sorted(queried - exported)


def test_prometheus_scrapes_both_endpoints_with_a_token() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["notebookos-cluster"]["metrics_path"] == "/metrics"
    assert jobs["notebookos-jupyter"]["metrics_path"] == "/api/notebookos/metrics"
    assert all(job["authorization"]["credentials_file"] for job in jobs.values())
