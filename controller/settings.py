"""The controller's settings: command-line options over ``SWITCHYARD_*`` environment variables."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from artifact.options import parse_cpus
from artifact.signing import Trust


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", protected_namespaces=())

    models_dir: Path = Field(Path("models"), description="the model registry")
    run_dir: Path = Field(Path(".switchyard"), description="state, logs and router config of one deployment")
    router: Literal["auto", "nginx", "builtin"] = Field("auto", description="auto: nginx if installed")
    backend: Literal["process", "docker"] = "process"
    router_host: str = "127.0.0.1"
    router_port: int = Field(8000, ge=1, le=65535)
    router_header_timeout: float = Field(
        15.0, gt=0, description="builtin router: seconds a request head, or an idle keep-alive wait, may take"
    )
    router_body_timeout: float = Field(30.0, gt=0, description="builtin router: seconds a request body may take")
    router_max_connections: int = Field(1024, ge=1, description="builtin router: client connections at once")
    ready_timeout: float = Field(60.0, gt=0, description="seconds a new instance has to become ready")
    lock_timeout: float = Field(5.0, ge=0, description="seconds to wait for another command to finish")
    gate_tolerance: float = Field(0.0, ge=0, le=1, description="how much worse the candidate's metric may be")
    max_slowdown: float = Field(3.0, ge=1, description="how many times slower than live a candidate may answer")
    instance_workers: int = Field(1, ge=1, le=16, description="uvicorn workers per instance")
    instance_cpu_affinity: str | None = Field(
        None,
        description="the instances' --cpu-affinity; auto: blue counts CPUs from the first, green from the last; "
        "unset: auto for processes, off for containers",
    )
    docker_image: str = Field("switchyard-service:latest", description="the service image (scripts/build-images)")
    docker_router_image: str = Field("switchyard-router:latest", description="docker/router/Dockerfile's image")
    docker_network: str = Field("switchyard", description="the network the router and instances share")
    docker_project: str = Field("switchyard", description="the switchyard.project label of its containers")
    docker_memory: str = Field("1g", description="memory limit of each container (docker's units: 512m, 2g)")
    docker_pids: int = Field(256, ge=16, description="process limit of each container")
    docker_socket_dir: Path | None = Field(None, description="host folder for the unix sockets; default: run dir")
    trusted_keys: Path = Field(Path("keys/trusted"), description="public keys an artifact must be signed by")
    allow_unsigned: bool = Field(False, description="release unsigned artifacts too: local experiments only")
    trusted_modules: str = Field("", description="more modules a pickle may use, comma-separated")
    shadow: bool = Field(True, description="a staged candidate gets copies of live /predict requests")
    shadow_percent: float = Field(100.0, ge=0, le=100, description="the share of live requests copied")
    shadow_rate: float = Field(100.0, gt=0, description="copies a second at most, so live never starves")
    shadow_timeout: float = Field(10.0, gt=0, description="seconds the candidate has to answer a copy")
    shadow_max_records: int = Field(100_000, ge=1, description="paired answers kept per candidate")
    shadow_examples: int = Field(20, ge=0, description="disagreements kept with their input")
    shadow_min_requests: int = Field(100, ge=0, description="promote: compared requests needed")
    shadow_min_agreement: float = Field(0.5, ge=0, le=1, description="promote: top-1 agreement with live needed")
    shadow_max_errors: int = Field(0, ge=0, description="promote: candidate errors allowed on copies")
    shadow_max_p99_ratio: float = Field(
        3.0, ge=1, description="promote: candidate p99 / live p99 allowed (tested on the answers past it)"
    )
    prediction_log: bool = Field(True, description="instances record every answer in the run dir (predictions.sqlite)")
    log_inputs: bool = Field(True, description="the prediction log keeps each input (off: only its digest)")
    log_max_age_days: float = Field(7.0, gt=0, description="the prediction log drops answers older than this")
    log_max_rows: int = Field(1_000_000, ge=1000, description="the prediction log keeps at most this many answers")
    quality_gate: Literal["off", "not-worse", "better"] = Field(
        "off",
        description="promote: on labelled live requests, the candidate must be not worse (by the margin) or better",
    )
    quality_margin: float = Field(0.0, ge=0, le=1, description="promote: the accuracy a 'not-worse' candidate may lose")
    drift_max_outside: float = Field(
        0.10, gt=0, lt=1, description="drift: the share of inputs outside the training lengths that alerts"
    )
    drift_max_label_shift: float = Field(
        0.25, gt=0, le=1, description="drift: the distance of the predicted label mix from training's that alerts"
    )
    drift_min_answers: int = Field(200, ge=1, description="drift: answers needed before the label mix is judged")
    quality_alpha: float = Field(
        0.05, gt=0, lt=1, description="live accuracy intervals hold at 1 - this, however often they are read"
    )
    watch_seconds: float = Field(300.0, ge=0, description="the watch after every deploy; 0: none")
    step_seconds: float = Field(60.0, gt=0, description="how long each canary step lasts at least")
    supervise: bool = Field(True, description="the agent restarts a dead router or live instance")
    agent_interval: float = Field(0.25, gt=0, description="seconds between the agent's looks")
    analysis_alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="the chance that the agent rolls back, or aborts, a version no worse than the old one, "
        "per canary step or watch, however often it looks",
    )
    analysis_error_effect: float = Field(
        2.0, gt=1, description="the 5xx rate, as a multiple of the old one, that the error test is tuned to find"
    )
    analysis_error_absolute: float = Field(
        0.01, ge=0, le=1, description="a new 5xx rate surely below the old one plus this is 'not worse'"
    )
    analysis_latency_quantile: float = Field(0.95, gt=0, lt=1, description="the latency quantile compared (the p95)")
    analysis_latency_effect: float = Field(
        2.0, gt=1, description="the new slot's quantile may be at most this many times the old slot's"
    )
    analysis_label_effect: float = Field(
        1.2, gt=1, description="a label's share, as a multiple of the old, that the predictions test is tuned to find"
    )
    analysis_min_samples: int = Field(200, ge=1, description="requests of the new slot before a canary step passes")
    analysis_max_label_shift: float = Field(
        0.25,
        ge=0,
        le=1,
        description="the least total variation distance of predicted labels that rolls back (a new model is "
        "expected to answer differently; one class for everything moves about 0.75)",
    )
    notify: str = Field("", description="webhook URLs for release events, comma-separated")
    console_url: str | None = Field(None, description="the console's address, for links in notifications")
    console_hosts: str = Field(
        "",
        description="Host header values the console answers, comma-separated, besides its own address and "
        "console_url's host (a DNS-rebinding page is refused)",
    )
    console_trusted_proxies: str = Field(
        "",
        description="addresses of reverse proxies whose X-Forwarded-For/-Proto the console believes, "
        "comma-separated; none by default, so a client cannot pick the address its login attempts count against",
    )

    @field_validator("instance_cpu_affinity")
    @classmethod
    def _cpus_exist(cls, value: str | None) -> str | None:
        if value is not None:
            parse_cpus(value)  # the same rules as the service's, checked before any instance starts
        return value

    def cpu_affinity(self, color: str) -> str:
        """Blue and green start from opposite ends of the CPU list, so a staged candidate that is being
        checked or previewed does not share a core with the live slot.

        Containers are not pinned unless asked: on two busy cores, a green container pinned to the
        last core answered with a p99 two to five times blue's, whichever model each ran (unpinned: alike),
        and a canary's analysis compares the two slots, so it read the core as a slower version."""
        chosen = self.instance_cpu_affinity or ("off" if self.backend == "docker" else "auto")
        if chosen == "auto" and color == "green":
            return "auto-reversed"
        return chosen

    def trust(self) -> Trust:
        return Trust.from_folder(self.trusted_keys, allow_unsigned=self.allow_unsigned)

    def instance_trust_args(self) -> list[str]:
        """The same trust, for the service instances the controller starts."""
        args = ["--trusted-keys", str(self.trusted_keys.resolve())]
        if self.allow_unsigned:
            args.append("--allow-unsigned")
        if self.trusted_modules:
            args += ["--trusted-modules", self.trusted_modules]
        return args

    def resolved_router(self) -> Literal["nginx", "builtin"]:
        if self.router == "auto":
            return "nginx" if shutil.which("nginx") else "builtin"
        return self.router

    @property
    def run_id(self) -> str:
        """A short stable id of this deployment (its run dir), used in instance tags and socket paths."""
        return hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:12]

    @property
    def docker_sockets(self) -> Path:
        """Shared by the router and instance containers; compose mounts ./.switchyard/docker-sockets."""
        return (self.docker_socket_dir or self.run_dir / "docker-sockets").resolve()

    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to 108 bytes, so sockets live in a short per-deployment folder
        # rather than under a possibly deep run dir.
        return Path(tempfile.gettempdir()) / f"switchyard-{self.run_id}"
