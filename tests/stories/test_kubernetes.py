"""`release render kubernetes`: every object validated offline against the Kubernetes API schemas
(strict), selectors, labels and probes that line up, and release.sh driven through a stage, a promote
and a rollback. No cluster runs here: a stand-in kubectl (tests/bin/kubectl) keeps the objects' state
and relays port-forwards to real service processes, so the checks the script runs are the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controller.cli.kubernetes import Target
from controller.drivers.host import free_port
from controller.errors import UsageError
from support import ROOT, TESTS, ServiceProcess, clean_env

KUBERNETES = kubernetes_validate.utils.latest_version()


def render(models: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "controller" / "release.py"), "render", "kubernetes", *args]
    return subprocess.run(
        [*command, "--models-dir", str(models), "--out", str(out)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )


@pytest.fixture(scope="module")
def rendered(registry: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("k8s")
    result = render(registry, out, "sample", "latest", "--namespace", "ml", "--replicas", "3")
    assert result.returncode == 0, result.stderr
    assert "kubectl apply -f" in result.stdout
    return out, list(yaml.safe_load_all((out / "switchyard-sample.yaml").read_text()))


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def test_every_object_is_valid_for_the_kubernetes_api(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, documents = rendered
    kinds = sorted(d["kind"] for d in documents)
    assert (
        kinds == ["ConfigMap"] + ["Deployment"] * 2 + ["NetworkPolicy"] + ["PodDisruptionBudget"] * 2 + ["Service"] * 2
    )
    keys = next(d for d in documents if d["kind"] == "ConfigMap")["data"]
    assert keys and all(pem.startswith("-----BEGIN PUBLIC KEY-----") for pem in keys.values())
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)  # raises on any schema error


def test_selectors_labels_and_probes_line_up(rendered: tuple[Path, list[dict[str, Any]]], registry: Path) -> None:
    _, documents = rendered
    deployments, services = by_kind(documents, "Deployment"), by_kind(documents, "Service")
    pods = {name.rsplit("-", 1)[1]: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}

    def selects(selector: dict[str, str]) -> set[str]:
        return {color for color, labels in pods.items() if selector.items() <= labels.items()}

    assert selects(services["switchyard-sample"]["spec"]["selector"]) == {"blue"}  # the live Service
    assert selects(services["switchyard-sample-preview"]["spec"]["selector"]) == {"green"}
    for name, budget in by_kind(documents, "PodDisruptionBudget").items():
        assert selects(budget["spec"]["selector"]["matchLabels"]) == {name.rsplit("-", 1)[1]}
    for color, deployment in ((n.rsplit("-", 1)[1], d) for n, d in deployments.items()):
        spec = deployment["spec"]
        assert selects(spec["selector"]["matchLabels"]) == {color}
        assert spec["replicas"] == (3 if color == "blue" else 0)  # green is idle until a stage
        container = spec["template"]["spec"]["containers"][0]
        ports = {p["name"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert {container[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} <= ports
        security = container["securityContext"]
        assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
        assert security["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["SWITCHYARD_MODEL"] == "/models/sample/2"
    for service in services.values():
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_models_from_an_image_come_through_an_init_container(registry: Path, tmp_path: Path) -> None:
    result = render(registry, tmp_path, "sample", "1", "--models-source", "image:registry.local/models:7")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all((tmp_path / "switchyard-sample.yaml").read_text()))
    pod = by_kind(documents, "Deployment")["switchyard-sample-blue"]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "registry.local/models:7"
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("sample", "1", "--models-source", "s3://bucket"), "expected pvc:CLAIM"),
        (("sample", "1", "--replicas", "0"), "must be at least 1"),
        (("sample", "1", "--namespace", "Not_A_Namespace"), "not a valid namespace"),
        (("sample", "9"), "version 9 not found"),
        (("sample", "1", "--image", "switchyard-service:latest"), "name a fixed tag or digest"),
        (("sample", "1", "--image", "registry.local:5000/switchyard"), "name a fixed tag or digest"),
    ],
)
def test_bad_render_options_are_one_line_and_exit_2(
    registry: Path, tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    result = render(registry, tmp_path / "out", *args)
    assert result.returncode == 2 and words in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out" / "release.sh").exists()


def test_pods_hold_no_api_token_open_no_connection_and_bound_their_scratch_space(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    pods = [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]
    assert pods and all(pod["automountServiceAccountToken"] is False for pod in pods)
    assert all(v["emptyDir"]["sizeLimit"] for pod in pods for v in pod["volumes"] if "emptyDir" in v)
    assert all(not c["image"].endswith(":latest") for pod in pods for c in pod["containers"])
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["egress"] == [] and policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    labels = policy["spec"]["podSelector"]["matchLabels"]
    assert all(
        labels.items() <= pod_labels.items()
        for pod_labels in (d["spec"]["template"]["metadata"]["labels"] for d in documents if d["kind"] == "Deployment")
    )


def test_a_model_name_kubernetes_cannot_use_is_refused() -> None:
    with pytest.raises(UsageError, match="cannot name Kubernetes objects"):
        Target("Company_Size", 1)


# ------------------------------------------------------------------ release.sh, against a stand-in kubectl


@pytest.fixture(scope="module")
def pods(registry: Path) -> Iterator[dict[str, ServiceProcess]]:
    """The real pods behind each color: v1 (rules) live in blue, v2 (TF-IDF) about to be staged in green."""
    with ServiceProcess(registry / "sample" / "1") as blue, ServiceProcess(registry / "sample" / "2") as green:
        yield {"blue": blue.wait_ready(), "green": green.wait_ready()}


def cluster(tmp_path: Path, pods: dict[str, ServiceProcess]) -> Path:
    state = tmp_path / "cluster.json"
    deployment = {"version": "1", "replicas": 0, "model": "/models/sample/1"}
    state.write_text(
        json.dumps(
            {
                "services": {"switchyard-sample": "blue", "switchyard-sample-preview": "green"},
                "deployments": {
                    "switchyard-sample-blue": deployment | {"replicas": 3},
                    "switchyard-sample-green": deployment,
                },
                "pods": {color: pod.port for color, pod in pods.items()},
            }
        )
    )
    return state


def script(
    rendered: tuple[Path, list[dict[str, Any]]], state: Path, registry: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    venv_bin = str(Path(sys.executable).parent)  # where `release` is installed
    env = clean_env(
        FAKE_KUBE_STATE=str(state),
        PREVIEW_PORT=str(free_port()),
        SWITCHYARD_MODELS_DIR=str(registry),
        PATH=os.pathsep.join([str(TESTS / "bin"), venv_bin, os.environ["PATH"]]),
    )
    done = subprocess.run(
        ["bash", str(rendered[0] / "release.sh"), *args], capture_output=True, text=True, env=env, timeout=120
    )
    forwards = subprocess.run(["pgrep", "-f", f"port-forward .* {env['PREVIEW_PORT']}:80"], capture_output=True)
    assert forwards.returncode == 1, "release.sh left its port-forward running"
    return done


def test_release_sh_stages_checks_promotes_and_rolls_back(
    rendered: tuple[Path, list[dict[str, Any]]], pods: dict[str, ServiceProcess], registry: Path, tmp_path: Path
) -> None:
    state = cluster(tmp_path, pods)

    def services() -> dict[str, str]:
        return json.loads(state.read_text())["services"]

    staged = script(rendered, state, registry, "stage", "2")
    assert staged.returncode == 0, staged.stdout + staged.stderr
    assert "check: smoke:" in staged.stdout and "check: gate: macro_f1" in staged.stdout
    assert services() == {"switchyard-sample": "blue", "switchyard-sample-preview": "green"}  # users see no change
    green = json.loads(state.read_text())["deployments"]["switchyard-sample-green"]
    assert green == {"version": "2", "replicas": 3, "model": "/models/sample/2"}

    promoted = script(rendered, state, registry, "promote")
    assert promoted.returncode == 0 and "green (v2) is live" in promoted.stdout, promoted.stderr
    assert services() == {"switchyard-sample": "green", "switchyard-sample-preview": "blue"}

    rolled = script(rendered, state, registry, "rollback")
    assert rolled.returncode == 0 and "blue (v1) is live" in rolled.stdout
    assert services() == {"switchyard-sample": "blue", "switchyard-sample-preview": "green"}


def test_release_sh_refuses_a_version_whose_checks_fail(
    rendered: tuple[Path, list[dict[str, Any]]], pods: dict[str, ServiceProcess], registry: Path, tmp_path: Path
) -> None:
    state = cluster(tmp_path, {"blue": pods["green"], "green": pods["blue"]})  # v2 live; v1 would be staged
    data = json.loads(state.read_text())
    data["deployments"]["switchyard-sample-blue"]["version"] = "2"
    state.write_text(json.dumps(data))
    staged = script(rendered, state, registry, "stage", "1")
    assert staged.returncode == 1
    assert "gate failed" in staged.stderr and "live traffic still goes to blue" in staged.stderr
    assert json.loads(state.read_text())["services"]["switchyard-sample"] == "blue"
