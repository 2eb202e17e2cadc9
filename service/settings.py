"""The service's settings: one typed place, from the command line or ``SWITCHYARD_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from artifact.options import parse_cpus


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", protected_namespaces=())

    model: Path = Field(description="an artifact version folder, e.g. models/industry/3")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 inside a container)")
    port: int = Field(8001, ge=0, le=65535, description="TCP port for clients, health checks and previews")
    uds: Path | None = Field(None, description="also listen on this unix socket (the router's upstream)")
    workers: int = Field(1, ge=1, le=64, description="worker processes; each binds the port with SO_REUSEPORT")
    cpu_affinity: str = Field(
        "auto",
        description="pin each worker to one CPU: auto (worker i on the i-th CPU this process may use), "
        "auto-reversed (counting from the last), off, or the CPUs to use in order, e.g. 2,3 or 0-3",
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="native (BLAS/OpenMP) threads per worker; default: 1 if pinned, else cores // workers"
    )
    max_batch_size: int = Field(128, ge=1, le=10_000, description="rows per model call when batching")
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description="extra wait to fill a batch under load")
    batching: bool = Field(True, description="gather concurrent requests into one model call")
    max_queue_rows: int = Field(4096, ge=1, description="rows waiting beyond this are shed with 503")
    max_instances: int = Field(256, ge=1, description="instances per request")
    max_text_length: int = Field(20_000, ge=1, description="characters per text field")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="request body size limit (413 above)")
    allow_version_mismatch: bool = Field(False, description="load a model built with another scikit-learn minor")
    trusted_keys: Path = Field(
        Path("keys/trusted"), description="folder of trusted public keys (*.pub): the artifact must be signed by one"
    )
    allow_unsigned: bool = Field(False, description="serve an unsigned artifact too: local experiments only")
    trusted_modules: str = Field(
        "", description="more modules whose classes a pickle may use, comma-separated (your own model classes)"
    )
    shadow_dir: Path | None = Field(
        None, description="follow the controller's shadow requests in this folder (control.json) and write pairs there"
    )
    prediction_log: Path | None = Field(
        None, description="record every answer in this SQLite file (the controller passes its run dir's)"
    )
    slot: str = Field("local", description="the slot this instance serves, as the prediction log records it")
    log_inputs: bool = Field(True, description="keep each input in the prediction log (off: only its digest)")
    log_max_age_days: float = Field(7.0, gt=0, description="the prediction log drops answers older than this")
    log_max_rows: int = Field(1_000_000, ge=1000, description="the prediction log keeps at most this many answers")
    feedback_token_file: Path | None = Field(
        None, description="accept POST /feedback with the bearer token in this file (off without one)"
    )
    graceful_timeout: float = Field(10.0, ge=0.0, description="seconds to finish in-flight requests on SIGTERM")
    keep_alive_timeout: int = Field(75, ge=1, description="outlasts the routers' upstream keep-alive")
    access_log: bool = Field(True, description="one JSON line per request on stderr")
    log_level: str = Field("info", description="debug | info | warning | error")

    @field_validator("model")
    @classmethod
    def _model_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not an artifact folder")
        return value

    @field_validator("cpu_affinity")
    @classmethod
    def _cpus_exist(cls, value: str) -> str:
        parse_cpus(value)
        return value

    def modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.trusted_modules.split(",") if m.strip())

    def worker_cpu(self, index: int) -> int | None:
        """The CPU worker ``index`` runs on, or None when workers are not pinned."""
        cpus = parse_cpus(self.cpu_affinity)
        return cpus[index % len(cpus)] if cpus else None

    def native_threads(self) -> int:
        if self.threads_per_worker:
            return self.threads_per_worker
        if parse_cpus(self.cpu_affinity):
            return 1  # a pinned worker has one core: more native threads would only take turns on it
        return max(1, len(os.sched_getaffinity(0)) // self.workers)
