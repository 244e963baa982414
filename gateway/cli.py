"""The ``store-gateway`` command line (docs/contracts.md section 1).

The only place where cancellation and errors become exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def _load_config(path: str | None) -> GatewayConfig:
    """The config file, validated, with every stage's own check of it (the lanes'
    dialects load); raises ConfigError listing every problem."""
    from gateway.checkout.flow import config_problems
    from gateway.config import load_config

    return load_config(path, checks=(config_problems,))


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.log import configure_logging, get_logger

    try:
        cfg = _load_config(args.config)
    except ConfigError as exc:
        for path, problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    configure_logging(cfg.log.level, cfg.log.format)
    log = get_logger("cli")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    try:
        asyncio.run(main())
    except GatewayError as exc:
        log.error("gateway_failed", error=str(exc), error_type=type(exc).__name__)
        return 2
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.config import resolve_config_path

    try:
        _load_config(args.config)
    except ConfigError as exc:
        for path, problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    print(f"{resolve_config_path(args.config)}: ok")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(
        duration_s=args.duration,
        outage_s=args.outage,
        events_per_s=args.rate,
        summary_json=args.summary_json,
    )


def _cmd_token(args: argparse.Namespace) -> int:
    import time

    from gateway.identity.tokens import token_at

    try:
        root = bytes.fromhex(args.key)
    except ValueError:
        print("--key: not hexadecimal", file=sys.stderr)
        return 1
    if len(root) != 32:
        print(f"--key: a root key is 32 bytes (64 hex digits), got {len(root)}", file=sys.stderr)
        return 1
    at = time.time() if args.at is None else args.at
    if not 0 <= at < 2**32 * 900:
        print("--at: out of range", file=sys.stderr)
        return 1
    print(token_at(root, at).hex())
    return 0


def _cmd_hq_push(args: argparse.Namespace) -> int:
    import datetime as dt
    import json
    from pathlib import Path

    from gateway.hq import tools

    try:
        doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"{args.file}: cannot read JSON: {exc}", file=sys.stderr)
        return 1
    now = dt.datetime.now(dt.UTC)
    salt = None
    if getattr(args, "loyalty_salt_file", None):
        salt = Path(args.loyalty_salt_file).read_bytes().strip()
    try:
        if args.kind == "profiles":
            messages = tools.profiles_messages(doc, now, salt)
        else:
            messages = tools.consent_messages(doc, now)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"{args.file}: {exc!r}", file=sys.stderr)
        return 1
    host, _, port = args.broker.rpartition(":")
    try:
        pub = tools.Publisher(
            host or "127.0.0.1",
            int(port),
            username=args.username,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
        )
    except ConfigError as exc:
        for path, problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return 1
    try:
        topic = tools.downlink_topic(args.kind, None if args.fleet else args.store)
        ok = pub.publish_all(topic, messages, args.timeout)
    finally:
        pub.close()
    print(f"{topic}: {ok}/{len(messages)} messages acknowledged")
    return 0 if ok == len(messages) else 1


def _cmd_pos_replay(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from gateway.checkout.flow import completed
    from gateway.errors import DialectError
    from gateway.publish.payloads import transaction_object
    from gateway.sensing.pos_dialect import load_dialect, replay

    try:
        dialect = load_dialect(args.dialect)
    except DialectError as exc:
        for where, what in exc.problems:
            prefix = "" if where == exc.source else f"{exc.source}: "
            print(f"{prefix}{where}: {what}", file=sys.stderr)
        return 1
    try:
        data = Path(args.capture).read_bytes()
    except OSError as exc:
        print(f"{args.capture}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    transactions = replay(dialect, data)
    for txn in transactions:
        # The raw number, as printed: a capture on store IT's desk is no upstream event.
        doc = transaction_object(completed(txn, 0.0, loyalty=txn.loyalty))
        if args.json:
            print(json.dumps(doc, ensure_ascii=False))
            continue
        print(_describe_transaction(doc, txn.reason))
    if not args.json:
        by_status: dict[str, int] = {}
        for txn in transactions:
            by_status[txn.status] = by_status.get(txn.status, 0) + 1
        counts = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items())) or "none"
        print(f"{args.capture}: {len(data)} bytes, {len(transactions)} transactions ({counts})")
    return 0


def _describe_transaction(doc: dict, reason: str | None) -> str:  # type: ignore[type-arg]
    """A transaction object as store IT reads it when checking a dialect."""
    status = doc["status"] + (f" ({reason})" if reason and doc["status"] != "complete" else "")
    lines = [f"transaction {doc['transaction'] or '?'}: {status}"]
    for label, key in (("item", "items"), ("void", "voids"), ("discount", "discounts")):
        for entry in doc[key]:
            qty = entry.get("quantity")
            unit = entry.get("unit")
            what = " ".join(
                str(part)
                for part in (
                    entry.get("code"),
                    entry.get("description"),
                    f"x {qty}{' ' + unit if unit else ''}" if qty else None,
                )
                if part
            )
            lines.append(f"  {label:<8} {what:<48} {entry.get('amount') or '?':>10}")
    lines.append(f"  loyalty  {doc['loyalty'] or '-'}")
    match = {True: "matches the lines", False: "DOES NOT MATCH the lines", None: "not checked"}
    lines.append(f"  total    {doc['total'] or '?'} ({match[doc['totals_match']]})")
    return "\n".join(lines)


def _cmd_model(args: argparse.Namespace) -> int:
    from gateway.hq import model_cli

    return model_cli.run(args)


def _add_model(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``model train`` and ``model recommend`` (HQ side: their code loads only when run)."""
    model = sub.add_parser("model", help="HQ: train a ranker bundle; batch-score requests")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="MODEL_COMMAND")

    tr = model_sub.add_parser("train", help="train a ranker on an Orders CSV and write a bundle")
    tr.add_argument("--orders", required=True, help="Orders CSV (docs/contracts.md section 1)")
    tr.add_argument("--out", required=True, help="bundle directory to write")
    tr.add_argument(
        "--variant",
        choices=("fp32", "int8", "both"),
        default="fp32",
        help="fp32 or int8 tables; both writes OUT/fp32 and OUT/int8 (default fp32)",
    )
    tr.add_argument("--signing-key", help="Ed25519 private key (PEM) to sign manifest.json")
    tr.add_argument(
        "--version",
        type=int,
        help="bundle version (default: the version already in OUT plus one, else 1)",
    )
    tr.add_argument("--k", type=int, default=10, help="items the graph returns (default 10)")
    tr.add_argument(
        "--profiles-out",
        help="also write each shopper's features as JSONL "
        '({"shopper": ..., "attributes": {"features": ...}}) for HQ profiles',
    )
    tr.add_argument(
        "--zones",
        default="",
        help="comma-separated zone names for the manifest (context index i = zone i-1)",
    )
    tr.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    tr.add_argument("--quiet", action="store_true", help="no progress on stderr")
    tr.set_defaults(func=_cmd_model)

    rc = model_sub.add_parser(
        "recommend", help="score a Requests JSONL with a bundle; one JSON line per request"
    )
    rc.add_argument("--bundle", required=True, help="bundle directory")
    rc.add_argument("--orders", required=True, help="Orders CSV the shoppers' features come from")
    rc.add_argument(
        "--requests", required=True, help="Requests JSONL (docs/contracts.md section 1)"
    )
    rc.add_argument("--top", type=int, help="items per request (default: the bundle's k)")
    rc.set_defaults(func=_cmd_model)


def _add_pos(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pos = sub.add_parser("pos", help="POS lanes: check a dialect against a captured feed")
    pos_sub = pos.add_subparsers(dest="pos_command", required=True, metavar="POS_COMMAND")
    rp = pos_sub.add_parser(
        "replay", help="what a POS dialect extracts from a captured byte stream"
    )
    rp.add_argument("--dialect", required=True, help="dialect file (firmware_configs/pos/*.toml)")
    rp.add_argument("capture", help="captured bytes of the lane's feed")
    rp.add_argument(
        "--json",
        action="store_true",
        help="one transaction object per line (docs/contracts.md section 1)",
    )
    rp.set_defaults(func=_cmd_pos_replay)


def _add_hq(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hq = sub.add_parser("hq", help="HQ tools: publish profiles and consent to stores")
    hq_sub = hq.add_subparsers(dest="hq_command", required=True, metavar="HQ_COMMAND")
    for kind, text in (
        ("profiles", "publish shopper profiles (root keys become day keys here)"),
        ("consent", "publish consent changes (opt-in, opt-out, scopes)"),
    ):
        p = hq_sub.add_parser(f"push-{kind}", help=text)
        p.add_argument("--file", required=True, help="JSON file (see docs/downlink.md)")
        target = p.add_mutually_exclusive_group(required=True)
        target.add_argument("--store", help="the store id to publish to")
        target.add_argument("--fleet", action="store_true", help="publish to every store")
        p.add_argument("--broker", default="127.0.0.1:1883", help="HQ broker host:port")
        p.add_argument("--username", help="password from $STORE_GATEWAY_HQ_PASSWORD")
        p.add_argument("--ca-file")
        p.add_argument("--cert-file")
        p.add_argument("--key-file")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for PUBACKs")
        if kind == "profiles":
            p.add_argument("--loyalty-salt-file", help="the fleet's loyalty salt (for loyalty_ids)")
        p.set_defaults(func=_cmd_hq_push, kind=kind)
    _add_hq_fleet(hq_sub)
    _add_hq_signing(hq_sub)


def _hq_signing(name: str) -> Any:
    """A command of hq/signing.py, imported only when it runs: the daemon loads no HQ code."""

    def run(args: argparse.Namespace) -> int:
        from gateway.hq import signing

        return int(getattr(signing, name)(args))

    return run


def _add_hq_signing(hq_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``hq keygen``, ``hq sign-bundle``, ``hq sign-keys``, ``hq timestamp``."""
    p = hq_sub.add_parser("keygen", help="generate an Ed25519 signing key (private key 0600)")
    p.add_argument("--out", required=True, help="private key file to write (PEM)")
    p.set_defaults(func=_hq_signing("cmd_keygen"))

    p = hq_sub.add_parser("sign-bundle", help="sign a model bundle (writes manifest.sig)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--key", required=True, help="private key file (PEM or hex)")
    p.set_defaults(func=_hq_signing("cmd_sign_bundle"))

    p = hq_sub.add_parser("sign-keys", help="a key rotation document (kind keys)")
    p.add_argument("--key", action="append", required=True, help="a CURRENT key (repeat)")
    p.add_argument(
        "--new-key", action="append", required=True, help="a new key: private file or .pub hex"
    )
    p.add_argument("--threshold", type=int, default=1)
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--lifetime", type=float, default=7 * 86400)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_hq_signing("cmd_sign_keys"))

    p = hq_sub.add_parser("timestamp", help="a signed, short-lived timestamp")
    p.add_argument("--key", action="append", required=True)
    p.add_argument("--version", type=int, help="default: the unix time")
    p.add_argument("--lifetime", type=float, default=3600)
    p.add_argument("--out", required=True, help="write the envelope here")
    p.set_defaults(func=_hq_signing("cmd_timestamp"))


def _cmd_hq_fleet_status(args: argparse.Namespace) -> int:
    from gateway.hq import fleet  # HQ code: loaded only when the command runs

    return fleet.cmd_status(args)


def _add_hq_fleet(hq_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fleet = hq_sub.add_parser("fleet", help="the fleet's models: status, rollback")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="CMD")
    status = fleet_sub.add_parser(
        "status", help="per store: active and pending version, state, reason, last report"
    )
    status.add_argument("--broker", default="127.0.0.1:1883", help="HQ broker host:port")
    status.add_argument("--username", help="password from $STORE_GATEWAY_HQ_PASSWORD")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait at most")
    status.add_argument(
        "--settle", type=float, default=0.5, help="stop after this long without a new store"
    )
    status.set_defaults(func=_cmd_hq_fleet_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="store-gateway",
        description="The in-store edge daemon: shoppers, baskets, next best actions, HQ sync.",
    )
    parser.add_argument("--version", action="version", version=f"store-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument(
        "--config",
        help="config file (default: $STORE_GATEWAY_CONFIG or /etc/store-gateway/gateway.toml)",
    )
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate the config file; exit 1 on problems")
    check.add_argument("--config", help="config file (default as for run)")
    check.set_defaults(func=_cmd_check_config)

    demo = sub.add_parser("demo", help="a whole simulated store on this machine")
    demo.add_argument(
        "--duration", type=float, default=45.0, help="seconds of simulated trading (default 45)"
    )
    demo.add_argument(
        "--outage",
        type=float,
        default=12.0,
        help="seconds HQ is cut off in the middle (default 12)",
    )
    demo.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="events per second from the scripted source (default 200)",
    )
    demo.add_argument(
        "--summary-json",
        action="store_true",
        help="print the summary as one JSON object on the last line",
    )
    demo.set_defaults(func=_cmd_demo)

    token = sub.add_parser(
        "token", help="print a shopper's BLE token (docs/contracts.md section 2)"
    )
    token.add_argument("--key", required=True, help="the shopper's 32-byte root key in hex")
    token.add_argument("--at", type=float, help="unix time (default now)")
    token.set_defaults(func=_cmd_token)

    _add_pos(sub)
    _add_model(sub)
    _add_hq(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
