"""Build each seam's backend from settings. The only place that chooses implementations;
production backends are imported lazily so the embedded default needs none of their
libraries, and a missing one fails with the extra that brings it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from axon.auth.authenticator import Authenticator
from axon.auth.keys import KeyStore
from axon.config import EngineSettings, Settings
from axon.core.errors import ConfigError
from axon.gateway.services import Check, Services
from axon.models.base import ModelInfo
from axon.queue.base import BACKSTOP_DELIVERY_LIMIT, JobQueue
from axon.ratelimit.base import RateLimiter
from axon.sessions.admission import Admission
from axon.sessions.cache import NoCache, SessionCache
from axon.sessions.load import LoadShedder
from axon.sessions.manager import SessionManager
from axon.sessions.store import SessionStore
from axon.streaming.base import TokenStreams
from axon.worker.engines.base import Engine
from axon.worker.job import JobSettings
from axon.worker.runner import Worker


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"{module} is not installed; install it with: pip install 'axon-serving[{extra}]'"
        ) from exc


@dataclass
class Backends:
    """Connected clients and the seams built on them; ``close`` releases all of them."""

    settings: Settings
    _redis: Any = None
    _redis_streams: Any = None
    _engine: Any = None
    _limiter: RateLimiter | None = None
    _queue: JobQueue | None = None
    _streams: TokenStreams | None = None
    _closers: list[Any] = field(default_factory=list)

    def _redis_client(self) -> Any:
        redis_client = _require("axon.redis_client", "distributed")
        client, close = redis_client.make_client(self.settings.backends)
        self._closers.append(close)
        return client

    def redis(self) -> Any:
        """The client for short commands: limits, cache, cancel flags."""
        if self._redis is None:
            self._redis = self._redis_client()
        return self._redis

    def redis_streams(self) -> Any:
        """The client for token streams, whose blocking reads each hold a connection
        while they wait: a pool of their own, so waiting relays can never starve
        admission, limits or readiness of connections."""
        if self._redis_streams is None:
            self._redis_streams = self._redis_client()
        return self._redis_streams

    async def queue(self) -> JobQueue:
        """The process's one queue client (in one process, the manager and the worker
        share it: the in-memory queue only works that way)."""
        if self._queue is None:
            self._queue = await self._new_queue()
        return self._queue

    def streams(self) -> TokenStreams:
        if self._streams is None:
            self._streams = self._new_streams()
        return self._streams

    async def _new_queue(self) -> JobQueue:
        b, q = self.settings.backends, self.settings.queue
        if b.queue == "memory":
            from axon.queue.memory import MemoryJobQueue

            return MemoryJobQueue()
        rabbitmq = _require("axon.queue.rabbitmq", "distributed")
        queue: JobQueue = rabbitmq.RabbitMQJobQueue(
            b.rabbitmq_urls or b.rabbitmq_url,
            prefix=b.rabbitmq_prefix,
            # Workers enforce ``q.delivery_limit`` themselves; the broker's is a backstop.
            delivery_limit=BACKSTOP_DELIVERY_LIMIT,
            publish_timeout_s=q.publish_timeout_s,
            heartbeat_s=q.heartbeat_s,
        )
        await queue.start()
        self._closers.append(queue.close)
        return queue

    def _new_streams(self) -> TokenStreams:
        s = self.settings.stream
        if self.settings.backends.streams == "memory":
            from axon.streaming.memory import MemoryTokenStreams

            return MemoryTokenStreams(ttl_s=s.ttl_s, maxlen=s.maxlen)
        redis_streams = _require("axon.streaming.redis", "distributed")
        streams: TokenStreams = redis_streams.RedisTokenStreams(
            self.redis_streams(),
            prefix=self.settings.backends.redis_prefix,
            ttl_s=s.ttl_s,
            maxlen=s.maxlen,
            # A stream still being written outlives its request's deadline, then expires.
            active_ttl_s=int(self.settings.server.request_timeout_s) + s.ttl_s,
        )
        return streams

    def cache(self) -> SessionCache:
        st = self.settings.store
        kind = self.settings.backends.cache
        if kind == "none":
            return NoCache()
        if kind == "memory":
            from axon.sessions.memory_cache import MemorySessionCache

            return MemorySessionCache(max_messages=st.history_messages, ttl_s=st.cache_ttl_s)
        redis_cache = _require("axon.sessions.redis_cache", "distributed")
        cache: SessionCache = redis_cache.RedisSessionCache(
            self.redis(),
            prefix=self.settings.backends.redis_prefix,
            max_messages=st.history_messages,
            ttl_s=st.cache_ttl_s,
        )
        return cache

    def limiter(self) -> RateLimiter:
        """One limiter per process, shared by the edge and the session manager."""
        if self._limiter is None:
            if self.settings.backends.ratelimit == "memory":
                from axon.ratelimit.memory import MemoryRateLimiter

                self._limiter = MemoryRateLimiter()
            else:
                redis_limiter = _require("axon.ratelimit.redis", "distributed")
                self._limiter = redis_limiter.RedisRateLimiter(
                    self.redis(), prefix=self.settings.backends.redis_prefix
                )
        return self._limiter

    async def sql_engine(self, *, migrate: bool) -> Any:
        """The durable store's engine, shared by the session store and the key store."""
        if self._engine is None:
            from axon.sessions import migrate as migrations
            from axon.sessions.database import engine_url, make_engine

            # The migrations build an engine of their own: give them a multi-host URL in
            # the form SQLAlchemy parses.
            url = engine_url(self.settings.store_url)
            if migrate:
                await migrations.upgrade(url)
            self._engine = make_engine(url, pool_size=self.settings.store.pool_size)
            self._closers.append(self._engine.dispose)
        return self._engine

    async def store(self, *, migrate: bool) -> SessionStore:
        from axon.sessions.sql import SqlSessionStore

        return SqlSessionStore(await self.sql_engine(migrate=migrate))

    async def keys(self) -> KeyStore:
        return KeyStore(await self.sql_engine(migrate=False))

    async def authenticator(self) -> Authenticator:
        auth = self.settings.auth
        jwt = None
        if auth.jwt.enabled:
            from axon.auth.jwt import JwtVerifier

            verifier = JwtVerifier(auth.jwt)
            self._closers.append(verifier.close)
            jwt = verifier
        return Authenticator(auth, await self.keys(), jwt)

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()
        self._closers.clear()


def engine(settings: Settings) -> Engine:
    """The engine this worker runs (``settings.engine``); its library imported only now."""
    e = settings.engine
    if e.kind == "fake":
        from axon.worker.engines.fake import FakeEngine

        return FakeEngine(
            e.model,
            context_window=e.context_window,
            tokens_per_second=e.fake_tokens_per_second,
            default_max_tokens=e.default_max_tokens,
            reply_tokens=e.fake_reply_tokens,
            fail_marker=e.fake_fail_marker,
        )
    if e.kind == "openai":
        remote = _require("axon.worker.engines.openai", "distributed")
        openai_engine: Engine = remote.OpenAIEngine.from_settings(e)
        return openai_engine
    if e.kind == "vllm":
        # vLLM itself is imported by the engine's start(), which names the fix if missing.
        from axon.worker.engines.vllm import VllmEngine

        return VllmEngine.from_settings(e)
    from axon.models.gguf import default_model_path
    from axon.worker.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(
        e.model,
        e.model_path or default_model_path(),
        context_window=e.context_window,
        threads=e.threads,
        default_max_tokens=e.default_max_tokens,
        capacity=e.capacity,
    )


def model_info(e: EngineSettings, engine: Engine | None = None) -> ModelInfo:
    """What the session manager knows of a model: no weights, only a tokenizer. In one
    process it shares the engine's; elsewhere it loads the GGUF vocabulary alone, or, for a
    model whose tokenizer is not at hand, estimates."""
    budget = e.default_max_tokens
    if engine is not None:
        return ModelInfo(engine.model, engine.context_window, engine.tokenizer, budget)
    if e.kind == "fake":
        from axon.models.estimate import EstimateTokenizer

        return ModelInfo(e.model, e.context_window, EstimateTokenizer(), budget)
    if e.kind == "llamacpp" or e.model_path is not None:
        from axon.models.gguf import GgufTokenizer, default_model_path

        path = e.model_path or default_model_path()
        return ModelInfo(e.model, e.context_window, GgufTokenizer(path), budget)
    from axon.models.estimate import EstimateTokenizer

    # Three bytes a token errs towards refusing early rather than failing in the engine.
    return ModelInfo(e.model, e.context_window, EstimateTokenizer(bytes_per_token=3), budget)


def served_models(settings: Settings) -> dict[str, ModelInfo]:
    return {m.model: model_info(m) for m in settings.served_models}


def worker(settings: Settings, engine: Engine, queue: JobQueue, streams: TokenStreams) -> Worker:
    w = settings.worker
    return Worker(
        engine=engine,
        queue=queue,
        streams=streams,
        settings=JobSettings(
            stream=settings.stream,
            lease_s=w.lease_s,
            delivery_limit=settings.queue.delivery_limit,
            outage_s=w.redis_outage_s,
            max_queue_wait_s=settings.limits.max_queue_wait_s,
        ),
        capacity=settings.engine.capacity,
        stop_grace_s=w.stop_grace_s,
    )


def model_loaded(engine: Engine) -> Check:
    """A readiness check: ready once the engine has loaded its model."""

    async def check() -> None:
        if not engine.ready:
            raise RuntimeError("model not loaded")

    return check


async def session_manager(
    backends: Backends, *, migrate: bool, models: dict[str, ModelInfo]
) -> SessionManager:
    """A session manager on ``backends``: its store, queue, streams, cache and limits."""
    settings = backends.settings
    manager = SessionManager(
        settings=settings,
        store=await backends.store(migrate=migrate),
        cache=backends.cache(),
        queue=await backends.queue(),
        streams=backends.streams(),
        models=models,
        # A stream slot outlives the longest request, then frees itself.
        admission=Admission(
            backends.limiter(), settings.limits, settings.server.request_timeout_s + 30.0
        ),
        load=LoadShedder(settings.limits),
    )
    backends._closers.append(manager.close)
    return manager


async def services(
    backends: Backends, manager: SessionManager, checks: dict[str, Check]
) -> Services:
    """What the HTTP layer needs, around ``manager``."""
    return Services(
        settings=backends.settings,
        manager=manager,
        limiter=backends.limiter(),
        keys=await backends.keys(),
        authenticator=await backends.authenticator(),
        checks=checks,
    )
