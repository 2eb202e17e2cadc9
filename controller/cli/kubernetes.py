"""``release render kubernetes``: what a team applies to run blue/green on a cluster.

The single-machine controller stays the embedded default; this renders the same design for
Kubernetes, as plain manifests and a script, with nothing to install in the cluster:

- one Deployment per color, serving one model version each (``SWITCHYARD_MODEL`` in its pod
  template), with readiness on ``/readyz``, liveness on ``/healthz``, resource requests and limits, a
  non-root user, a read-only root filesystem and no privilege escalation;
- a Service ``<app>`` whose selector names the live color (the flip is a patch of that selector),
  and a preview Service ``<app>-preview`` that selects the other color;
- a PodDisruptionBudget per color;
- a ConfigMap of the trusted public keys, mounted read-only: pods verify each artifact's signature;
- ``release.sh``: stage, promote, rollback and status with kubectl, checking a staged version through
  the preview Service with ``release check`` (readiness with identity, golden rows, the metric gate
  against what is live), exactly the checks a local stage runs.

Model files come from a volume (``--models-source pvc:CLAIM``, the default, a read-only
PersistentVolumeClaim holding the registry) or from an image (``--models-source image:IMAGE``: an init
container copies the image's ``/models`` into an emptyDir). Either way the service verifies each
artifact's hash against its manifest before loading it, as everywhere else.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from importlib.metadata import version as _version
from typing import Any

from artifact.manifest import Manifest
from controller.errors import UsageError

COLORS = ("blue", "green")
PORT = 8001
VERSION = _version("switchyard")
TMP_SIZE = "64Mi"


@dataclass(frozen=True)
class Target:
    name: str  # the model's name
    version: int  # what blue serves (live) at first; green starts idle
    namespace: str = "default"
    replicas: int = 2
    image: str = f"switchyard-service:{VERSION}"
    models_source: str = "pvc:switchyard-models"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", self.name):
            raise UsageError(
                f"model name {self.name!r} cannot name Kubernetes objects: lowercase letters, digits and '-' only"
            )
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise UsageError(f"--namespace {self.namespace!r} is not a valid namespace name")
        if self.replicas < 1:
            raise UsageError(f"--replicas {self.replicas}: must be at least 1")
        tag = self.image.rpartition("/")[2].partition(":")[2]
        if "@sha256:" not in self.image and tag in ("", "latest"):
            raise UsageError(
                f"--image {self.image!r}: name a fixed tag or digest (IMAGE:TAG, IMAGE@sha256:...); "
                "with :latest each node may run whatever was pushed last"
            )
        self.source()

    @property
    def app(self) -> str:
        return f"switchyard-{self.name}"

    def source(self) -> tuple[str, str]:
        kind, _, value = self.models_source.partition(":")
        if kind not in ("pvc", "image") or not value:
            raise UsageError(
                f"--models-source {self.models_source!r}: expected pvc:CLAIM (a volume holding the registry) "
                "or image:IMAGE (an image with the registry under /models)"
            )
        return kind, value


def _labels(target: Target, color: str | None = None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "switchyard",
        "app.kubernetes.io/instance": target.app,
        "switchyard.io/model": target.name,
    }
    return labels | ({"switchyard.io/color": color} if color else {})


def _meta(target: Target, name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": target.namespace, "labels": labels, **extra}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def deployment(target: Target, color: str, version: int, replicas: int, manifest: Manifest) -> dict[str, Any]:
    kind, source = target.source()
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "trusted-keys", "configMap": {"name": f"{target.app}-trusted-keys"}},
    ]
    init: list[dict[str, Any]] = []
    if kind == "pvc":
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": source, "readOnly": True}})
    else:
        volumes.append({"name": "models", "emptyDir": {"sizeLimit": "8Gi"}})
        init.append(
            {
                "name": "models",
                "image": source,
                "command": ["sh", "-c", "cp -R /models/. /shared/"],
                "volumeMounts": [{"name": "models", "mountPath": "/shared"}],
                "securityContext": _security() | {"readOnlyRootFilesystem": True},
            }
        )
    container = {
        "name": "service",
        "image": target.image,
        "env": [
            {"name": "SWITCHYARD_MODEL", "value": f"/models/{target.name}/{version}"},
            {"name": "SWITCHYARD_HOST", "value": "0.0.0.0"},
            {"name": "SWITCHYARD_PORT", "value": str(PORT)},
            {"name": "SWITCHYARD_CPU_AFFINITY", "value": "off"},  # the kubelet places pods on CPUs
            {"name": "SWITCHYARD_TRUSTED_KEYS", "value": "/keys"},  # artifacts must be signed by one of them
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "startupProbe": _probe("/healthz", 2, 60),
        "readinessProbe": _probe("/readyz", 2, 3),
        "livenessProbe": _probe("/healthz", 10, 3),
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        "securityContext": _security(),
        "volumeMounts": [
            {"name": "models", "mountPath": "/models", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "trusted-keys", "mountPath": "/keys", "readOnly": True},
        ],
    }
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the service never talks to the API server
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "containers": [container],
        "volumes": volumes,
    }
    if init:
        pod["initContainers"] = init
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            target,
            f"{target.app}-{color}",
            _labels(target, color) | {"switchyard.io/version": str(version)},
            annotations={"switchyard.io/sha256": manifest.artifact.sha256},
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(target, color)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": _labels(target, color)}, "spec": pod},
        },
    }


def service(target: Target, name: str, color: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(target, name, _labels(target)),
        "spec": {
            "selector": _labels(target, color),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def disruption_budget(target: Target, color: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(target, f"{target.app}-{color}", _labels(target, color)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(target, color)}},
    }


def trusted_keys(target: Target, keys: dict[str, str]) -> dict[str, Any]:
    """The public keys the pods trust (file name -> PEM), as the controller's own trusted folder has them."""
    if not keys:
        raise UsageError("no trusted public keys to render: the pods would refuse every artifact (see --trusted-keys)")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(target, f"{target.app}-trusted-keys", _labels(target)),
        "data": keys,
    }


def network_policy(target: Target) -> dict[str, Any]:
    """Pods take connections on their HTTP port only, and open none: a compromised model process
    cannot reach the API server, a database or the internet. Narrow ``from`` to your ingress."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(target, target.app, _labels(target)),
        "spec": {
            "podSelector": {"matchLabels": _labels(target)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": PORT}]}],
            "egress": [],
        },
    }


def render(target: Target, manifest: Manifest, keys: dict[str, str]) -> list[dict[str, Any]]:
    """Blue serves ``target.version`` and is live; green is idle (0 replicas) until a stage."""
    return [
        trusted_keys(target, keys),
        deployment(target, "blue", target.version, target.replicas, manifest),
        deployment(target, "green", target.version, 0, manifest),
        service(target, target.app, "blue"),
        service(target, f"{target.app}-preview", "green"),
        *(disruption_budget(target, color) for color in COLORS),
        network_policy(target),
    ]


SCRIPT = """#!/usr/bin/env bash
# Generated by `release render kubernetes`: blue/green for {app} in namespace {namespace}.
#   ./release.sh status | stage VERSION | promote | rollback
# Needs kubectl (pointed at the cluster) and Switchyard's `release` CLI with the same model registry
# as the cluster's models volume: `release check` checks a staged version through the preview Service
# exactly as a local stage does (readiness with identity, golden rows, the metric gate).
set -euo pipefail
NS={namespace}
APP={app}
NAME={name}
REPLICAS={replicas}
PREVIEW_PORT=${{PREVIEW_PORT:-18001}}
k() {{ kubectl -n "$NS" "$@"; }}
live() {{ k get service "$APP" -o jsonpath='{{.spec.selector.switchyard\\.io/color}}'; }}
other() {{ if [ "$1" = blue ]; then echo green; else echo blue; fi; }}
version_of() {{ k get deployment "$APP-$1" -o jsonpath='{{.metadata.labels.switchyard\\.io/version}}'; }}
select_color() {{  # $1: a Service, $2: the color it sends traffic to
    k patch service "$1" --type merge -p "{{\\"spec\\":{{\\"selector\\":{{\\"switchyard.io/color\\":\\"$2\\"}}}}}}"
}}
ready() {{ k rollout status "deployment/$APP-$1" --timeout=300s; }}

check() {{  # $1: the staged version, $2: the live one
    # kubectl itself in the background (not through k, whose subshell would be what $! names and kills)
    kubectl -n "$NS" port-forward "service/$APP-preview" "$PREVIEW_PORT:80" >/dev/null 2>&1 &
    local forward=$!
    trap 'kill $forward 2>/dev/null; wait $forward 2>/dev/null || true' RETURN
    for _ in $(seq 1 60); do
        curl -fsS -o /dev/null "http://127.0.0.1:$PREVIEW_PORT/healthz" 2>/dev/null && break
        sleep 0.5
    done
    release check "$NAME" "$1" --url "http://127.0.0.1:$PREVIEW_PORT" --against "$2"
}}

case "${{1:-}}" in
status)
    current=$(live)
    echo "live:   $current (v$(version_of "$current"))"
    echo "other:  $(other "$current") (v$(version_of "$(other "$current")"))"
    ;;
stage)
    version=${{2:?usage: release.sh stage VERSION}}
    current=$(live); idle=$(other "$current")
    k set env "deployment/$APP-$idle" "SWITCHYARD_MODEL=/models/$NAME/$version"
    k label deployment "$APP-$idle" "switchyard.io/version=$version" --overwrite
    k scale "deployment/$APP-$idle" --replicas="$REPLICAS"
    ready "$idle"
    select_color "$APP-preview" "$idle"
    if ! check "$version" "$(version_of "$current")"; then
        echo "stage: v$version in $idle failed its checks; live traffic still goes to $current" >&2
        exit 1
    fi
    echo "stage: v$version is staged in $idle; live traffic still goes to $current"
    ;;
promote | rollback)
    current=$(live); target=$(other "$current")
    ready "$target"  # never flip to a color without ready pods
    select_color "$APP" "$target"
    select_color "$APP-preview" "$current"
    echo "$1: $target (v$(version_of "$target")) is live; $current (v$(version_of "$current")) keeps running"
    ;;
*)
    echo "usage: $0 status | stage VERSION | promote | rollback" >&2
    exit 2
    ;;
esac
"""


def script(target: Target) -> str:
    return SCRIPT.format(
        app=shlex.quote(target.app),
        namespace=shlex.quote(target.namespace),
        name=shlex.quote(target.name),
        replicas=target.replicas,
    )
