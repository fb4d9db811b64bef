"""Entry point of the ``axon`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from axon.cli import keys
from axon.config import Settings
from axon.core.errors import ConfigError
from axon.observability import logging as axon_logging
from axon.observability import tracing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="axon", description="LLM chat serving.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run every role in one process (embedded backends)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    for role, text in (
        ("gateway", "run a gateway (forwards to session managers, or runs one inside)"),
        ("session-manager", "run a session manager (on PostgreSQL, Redis and RabbitMQ)"),
        ("worker", "run an inference worker (consumes jobs from RabbitMQ)"),
    ):
        p = sub.add_parser(role, help=text)
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")
    up = sub.add_parser("up", help="launch the whole distributed stack on this machine")
    up.add_argument("--gateways", type=int, default=1)
    up.add_argument("--session-managers", type=int, default=1)
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--base-port", type=int, default=8000, help="first port to use")
    chat = sub.add_parser("chat", help="chat in the terminal with a running server")
    chat.add_argument("--url", default="http://127.0.0.1:8000", help="server URL")
    chat.add_argument("--session", help="continue this session id")
    chat.add_argument(
        "--api-key", help="API key for a server that requires one (default: $AXON_API_KEY)"
    )
    keys.add_parser(sub)
    convert = sub.add_parser(
        "convert-model",
        help="write a Hugging Face model folder (for the vllm engine) from a GGUF file",
    )
    convert.add_argument("args", nargs=argparse.REMAINDER, help="[GGUF] OUT_DIR [--dtype D]")
    db = sub.add_parser("db", help="durable store administration")
    db.add_argument("action", choices=["upgrade"], help="bring the schema up to date")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    server: dict[str, object] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None):
        server["port"] = args.port
    settings = Settings.from_environment()
    if server:
        settings.server = settings.server.model_copy(update=server)
    return settings


async def _run_role(role: str, settings: Settings) -> None:
    from axon.cli import roles
    from axon.cli.run import serve_http

    if role == "worker":
        await roles.run_worker(settings)
    elif role == "gateway":
        await serve_http(await roles.gateway_app(settings), settings)
    else:
        await serve_http(await roles.session_manager_app(settings, edge=False), settings)


def _raise_file_limit() -> None:
    """Every open stream costs a server a socket or two: lift the soft limit on open files
    to the hard one (often 1,024 against 1,048,576), or a burst of clients ends in
    "too many open files" instead of answers."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "convert-model":
        from axon.models.convert import main as convert_main

        sys.exit(convert_main(args.args))
    if args.command == "chat":
        from axon.cli.chat import run_chat

        sys.exit(run_chat(args.url, args.session, args.api_key or os.environ.get("AXON_API_KEY")))
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"axon: {exc.message}", file=sys.stderr)
        sys.exit(2)
    axon_logging.configure(
        service=f"{settings.service}-{args.command}",
        # `axon keys` speaks to a person (and prints a key on its last line): only
        # warnings may interleave with that.
        level="WARNING" if args.command == "keys" else settings.log.level,
        fmt=settings.log.format,
    )
    if args.command in ("serve", "gateway", "session-manager", "worker", "up"):
        _raise_file_limit()
    try:
        if args.command in ("serve", "gateway", "session-manager", "worker"):
            # Before any client is built: the instrumentations patch the libraries' classes.
            tracing.configure(f"{settings.service}-{args.command}", settings.tracing)
        if args.command == "serve":
            from axon.cli.run import serve_embedded

            asyncio.run(serve_embedded(settings))
        elif args.command in ("gateway", "session-manager", "worker"):
            asyncio.run(_run_role(args.command, settings.with_shared_backends()))
        elif args.command == "up":
            from axon.cli.up import run_up

            sys.exit(run_up(args, settings))
        elif args.command == "keys":
            sys.exit(keys.run_keys(args, settings))
        elif args.command == "db":
            from axon.sessions.database import ensure_database
            from axon.sessions.migrate import upgrade_sync

            asyncio.run(ensure_database(settings.store_url))
            upgrade_sync(settings.store_url)
            print(f"schema up to date at {settings.store_url.split('@')[-1]}")
    except ConfigError as exc:
        print(f"axon: {exc.message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    finally:
        tracing.shutdown()
