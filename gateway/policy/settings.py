"""Process settings from the environment (``GATEWAY_*``); routing policy lives in the YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_CONFIG = Path(__file__).parent.parent / "configs" / "local.yaml"


class Settings(BaseSettings):
    """Everything about the process; ``GATEWAY_`` + the upper-case field name sets each."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    config: Path = Field(default=EMBEDDED_CONFIG, description="policy YAML file")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    redis_url: str | None = None
    redis_prefix: str = Field(default="gw", description="key prefix: one per gateway deployment")
    alert_webhook_url: str | None = None
    admin_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    qdrant_url: str | None = Field(default=None, description="a Qdrant server; unset: embedded")
    qdrant_api_key: str | None = None
    knowledge_path: Path = Field(
        default=Path("data/qdrant"), description="the embedded knowledge store (no qdrant_url)"
    )
    # The embedded engine: Qdrant Edge (in-process HNSW), or qdrant-client's local mode (brute
    # force; slow past ~20k chunks). Measured in bench/knowledge.py; see the README.
    knowledge_engine: Literal["edge", "qdrant-local"] = "edge"
    embedder: Literal["torch", "onnx", "onnx-int8"] = Field(
        # onnx-int8: the only backend that keeps a semantic cache hit under 5 ms (README, cache)
        default="onnx-int8",
        description="embedding backend (cache/embedders.py)",
    )
    data_dir: Path = Field(default=Path("data"), description="exported models and local state")
    log_level: str = "INFO"
    gc_gen0_threshold: int = Field(default=10_000, ge=100, description="see background.tune_gc")
    # Telemetry (gateway/telemetry/observe.py): decision records and traces.
    decision_log: Path | None = Field(
        default=None, description="append each decision record here as a JSON line"
    )
    decision_stream_maxlen: int = Field(
        default=10_000, ge=100, description="Redis stream of decisions: about this many kept"
    )
    decision_ring_size: int = Field(default=1000, ge=10, description="decisions kept in memory")
    decision_stream: bool = Field(
        default=True, description="with redis_url: stream decision records to Redis"
    )
    tier_outcome_stream: bool = Field(
        default=True,
        description="with redis_url: share tier router outcomes across replicas and restarts",
    )
    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces"
    )
    otlp_service_name: str = "knowledge-gateway"
    otlp_sample_ratio: float = Field(default=1.0, ge=0, le=1, description="share of traces kept")
    telemetry_process: bool = Field(
        default=True,
        description="write decision records and export spans from a child process "
        "(gateway/telemetry/exporter.py), off the serving process's event loop",
    )
    # SIGTERM: /readyz turns not-ready, serving goes on for drain_delay_s (load balancers stop
    # sending), then in-flight requests and streams get up to shutdown_timeout_s to finish.
    drain_delay_s: float = Field(default=0.0, ge=0)
    # A stage before dispatch (cache, knowledge) may spend at most this long, and never more than
    # half of what is left of the request's deadline; past it the request goes on without it.
    stage_timeout_s: float = Field(default=1.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    # Hardening (docs/security.md). Slow clients: a connection must deliver its first request's
    # headers within header_timeout_s, and a request's body within body_timeout_s (else 408).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    # The auth brake: failed authentications per client address and per key prefix; past the
    # burst within the window, 429 until the window ends (gateway/core/auth_brake.py).
    auth_fail_burst: int = Field(default=20, ge=1)
    auth_fail_window_s: float = Field(default=60.0, gt=0)
    # Behind n trusted proxies: the client address is the n-th X-Forwarded-For entry from the
    # right; 0 = the TCP peer.
    forwarded_for_hops: int = Field(default=0, ge=0, le=10)
    # /metrics: with a digest set, it wants "Authorization: Bearer <key>" (the admin key or this
    # one); metrics_port serves /metrics alone on another port, without a key (for Prometheus on
    # an internal network).
    metrics_key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
