"""``axon keys create|list|revoke``: API keys in the durable store named by the settings."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from axon.config import Settings
from axon.core.errors import AxonError

if TYPE_CHECKING:
    from axon.auth.keys import KeyRecord


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="manage API keys (create, list, revoke)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--tenant", required=True, help="tenant the key's caller belongs to")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the server's)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: the server's)")
    create.add_argument("--max-streams", type=int, help="open streams at once (default: none)")
    create.add_argument("--expires-in-days", type=float, help="expire after this many days")
    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (`key_...`, from `axon keys list`)")


def _limit(value: int | None) -> str:
    return "default" if value is None else ("unlimited" if value == 0 else str(value))


def _line(r: KeyRecord) -> str:
    def when(value: object) -> str:
        return str(value)[:19] if value else "-"

    state = "revoked" if r.revoked_at else "active"
    return (
        f"{r.id}  {r.tenant:<16} {r.prefix}…  rpm={_limit(r.requests_per_minute)} "
        f"tpm={_limit(r.tokens_per_minute)} streams={_limit(r.max_streams)}  "
        f"created={when(r.created_at)} last_used={when(r.last_used_at)} "
        f"expires={when(r.expires_at)} {state}"
    )


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    # Imported here: every other command's start-up should not pay for the database layer.
    from axon.auth.keys import KeyStore
    from axon.sessions.database import ensure_database, make_engine
    from axon.sessions.migrate import upgrade

    url = settings.store_url
    await ensure_database(url)
    await upgrade(url)
    engine = make_engine(url)
    try:
        store = KeyStore(engine)
        if args.action == "create":
            record, key = await store.create(
                args.tenant,
                requests_per_minute=args.rpm,
                tokens_per_minute=args.tpm,
                max_streams=args.max_streams,
                expires_in_days=args.expires_in_days,
            )
            print(_line(record))
            print("Store this key now: it is not shown again.", file=sys.stderr)
            print(key, flush=True)
        elif args.action == "list":
            for record in await store.list(args.tenant):
                print(_line(record))
        else:
            record = await store.revoke(args.id)
            print(_line(record))
    finally:
        await engine.dispose()


def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    try:
        asyncio.run(_run(args, settings))
    except AxonError as exc:
        print(f"axon keys: {exc.message}", file=sys.stderr)
        return 2
    return 0
