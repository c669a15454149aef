"""`sdxl-img2img keys create|list|revoke|add-credits`: manage API keys (CONTRACT section 7)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import redis

from app.core import api_keys
from app.core.api_keys import ApiKey
from app.core.errors import ServiceError
from app.core.redis_keys import RedisKeys
from app.core.settings import load_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help="manage API keys", description="Manage API keys.")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--credits", type=int, help="credit balance (default: unlimited)")
    create.add_argument("--rpm", type=int, help="submissions per minute (default: unlimited)")
    create.add_argument("--models", help="comma-separated base models allowed (default: all)")
    create.add_argument(
        "--concurrency", type=int, help="most requests PROCESSING at once, the others wait (default: any)"
    )
    create.add_argument(
        "--unmoderated",
        action="store_true",
        help="skip the content blocks (SDXL_BLOCKED_TERMS_FILE, SDXL_SAFETY_CHECKER) for this key",
    )
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="list keys (never shows the keys themselves)")
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="disable a key: it then answers 401")
    revoke.add_argument("key_or_id", metavar="KEY_OR_ID")
    revoke.set_defaults(handler=_revoke)

    add = actions.add_parser("add-credits", help="add credits to a key's balance")
    add.add_argument("key_or_id", metavar="KEY_OR_ID")
    add.add_argument("amount", type=int, metavar="C")
    add.set_defaults(handler=_add_credits)

    for action in (create, listing, revoke, add):
        action.add_argument("--json", action="store_true", help="print JSON on one line")


def _run(args: argparse.Namespace, action: Any) -> int:
    """Open Redis, run the action, and turn expected failures into one line on stderr, exit 1."""
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout_s)
    try:
        action(client, RedisKeys(settings.redis_prefix))
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"error: cannot reach Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def _create(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models is not None else None

    def action(r: redis.Redis, keys: RedisKeys) -> None:
        key, record = api_keys.create_key(
            r,
            keys,
            name=args.name,
            credits=args.credits,
            rpm=args.rpm,
            models=models,
            concurrency=args.concurrency,
            unmoderated=args.unmoderated,
        )
        if args.json:
            data = record.to_dict()
            shown = ("id", "name", "credits", "rpm", "models", "concurrency", "unmoderated")
            out = {"key": key, **{k: data[k] for k in shown}}
            print(json.dumps(out))
        else:
            print(key)
            print(f"created {_describe(record)}; the key is shown only this once", file=sys.stderr)

    return _run(args, action)


def _list(args: argparse.Namespace) -> int:
    def action(r: redis.Redis, keys: RedisKeys) -> None:
        records = api_keys.list_keys(r, keys)
        if args.json:
            print(json.dumps([rec.to_dict() for rec in records]))
            return
        rows = [("ID", "NAME", "CREDITS", "USED", "RPM", "CONCURRENCY", "MODELS", "STATUS", "CREATED (UTC)")]
        rows += [_row(rec) for rec in records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())

    return _run(args, action)


def _revoke(args: argparse.Namespace) -> int:
    def action(r: redis.Redis, keys: RedisKeys) -> None:
        _print_record(api_keys.revoke_key(r, keys, args.key_or_id), args.json, "revoked")

    return _run(args, action)


def _add_credits(args: argparse.Namespace) -> int:
    def action(r: redis.Redis, keys: RedisKeys) -> None:
        _print_record(api_keys.add_credits(r, keys, args.key_or_id, args.amount), args.json, "updated")

    return _run(args, action)


def _print_record(record: ApiKey, as_json: bool, verb: str) -> None:
    print(json.dumps(record.to_dict()) if as_json else f"{verb} {_describe(record)}")


def _describe(record: ApiKey) -> str:
    _, name, credits, _, rpm, concurrency, models, status, _ = _row(record)
    return (
        f"{record.id} ({name}): credits {credits}, rpm {rpm}, concurrency {concurrency}, "
        f"models {models}, {status}"
    )


def _row(record: ApiKey) -> tuple[str, ...]:
    created = (
        datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if record.created_at is not None
        else "-"
    )
    return (
        record.id,
        record.name,
        "unlimited" if record.credits is None else str(record.credits),
        str(record.used),
        "unlimited" if record.rpm is None else str(record.rpm),
        "unlimited" if record.concurrency is None else str(record.concurrency),
        "all" if record.models is None else ",".join(record.models),
        "revoked" if record.disabled else "active",
        created,
    )
