"""``regsearch webhooks add | list | remove | deliveries``: an owner's webhooks, over the HTTP API."""

from __future__ import annotations

import json
import sys

from service.cli.client import _add_url, _call, _client
from service.models import WebhookEvent


def register(subparsers) -> None:
    webhooks = subparsers.add_parser(
        "webhooks", help="register, list and remove webhooks; see their deliveries",
        description="Webhooks: the server POSTs signed JSON (X-Regsearch-Signature: sha256=HMAC of the body) on a study's "
        "completed, failed, stopped and new_best events (docs/api.md, \"Webhooks\").",
    )
    commands = webhooks.add_subparsers(dest="webhooks_command", metavar="ACTION")
    commands.required = True
    add = commands.add_parser("add", help="register a URL (prints its secret, shown only this once)")
    add.add_argument("hook_url", metavar="URL", help="where to POST the events (a host the server allows)")
    add.add_argument("--study", help="only this study's events (default: every study of yours)")
    add.add_argument("--event", dest="events", action="append", choices=[event.value for event in WebhookEvent],
                     help="an event to send (repeat it; default all)")
    add.add_argument("--json", action="store_true", help="print the API's JSON")
    listing = commands.add_parser("list", help="your webhooks (every webhook for an admin token)")
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    remove = commands.add_parser("remove", help="remove a webhook (its pending deliveries are dropped)")
    remove.add_argument("hook_id", metavar="ID", type=int)
    deliveries = commands.add_parser("deliveries", help="a webhook's latest deliveries: status, attempts, last answer")
    deliveries.add_argument("hook_id", metavar="ID", type=int)
    deliveries.add_argument("--limit", type=int, default=20, help="at most this many, newest first (default 20)")
    deliveries.add_argument("--json", action="store_true", help="print the API's JSON")
    for parser, func in ((add, _add), (listing, _list), (remove, _remove), (deliveries, _deliveries)):
        _add_url(parser)
        parser.set_defaults(func=func)


def _add(args) -> int:
    with _client(args) as client:
        hook = _call(client.add_webhook, args.hook_url, args.events, args.study)
    if args.json:
        print(json.dumps(hook, indent=2))
        return 0
    print(hook["secret"])
    print(f"webhook {hook['id']} registered for {hook['study'] or 'all your studies'} ({', '.join(hook['events'])}) -> "
          f"{hook['url']}; the secret above signs its deliveries and is shown only now", file=sys.stderr)
    return 0


def _list(args) -> int:
    with _client(args) as client:
        hooks = _call(client.webhooks)
    if args.json:
        print(json.dumps(hooks, indent=2))
        return 0
    if not hooks:
        print("no webhooks")
        return 0
    print(f"{'ID':>4}  {'OWNER':<12} {'STUDY':<20} {'EVENTS':<36} {'PEND/OK/FAIL':<13} URL")
    for hook in hooks:
        counts = hook["deliveries"]
        tally = f"{counts['pending']}/{counts['delivered']}/{counts['failed']}"
        print(f"{hook['id']:>4}  {hook['owner']:<12} {hook['study'] or '(all)':<20} {','.join(hook['events']):<36} {tally:<13} {hook['url']}")
    return 0


def _remove(args) -> int:
    with _client(args) as client:
        _call(client.remove_webhook, args.hook_id)
    print(f"webhook {args.hook_id} removed")
    return 0


def _deliveries(args) -> int:
    with _client(args) as client:
        rows = _call(client.webhook_deliveries, args.hook_id, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"webhook {args.hook_id} has no deliveries yet")
        return 0
    print(f"{'DELIVERY':<36}  {'EVENT':<9} {'STUDY':<20} {'STATUS':<9} {'TRIES':>5} {'CODE':>4}  LAST ERROR")
    for row in rows:
        code = row["last_status_code"] if row["last_status_code"] is not None else "-"
        print(f"{row['id']:<36}  {row['event']:<9} {row['study']:<20} {row['status']:<9} {row['attempts']:>5} {code:>4}  "
              f"{(row['last_error'] or '')[:60]}")
    return 0
