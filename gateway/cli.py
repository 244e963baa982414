"""The ``store-gateway`` command line (CONTRACTS.md section 1).

The only place where cancellation and errors become exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError, GatewayError


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.config import load_config
    from gateway.log import configure_logging, get_logger

    try:
        cfg = load_config(args.config)
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
    from gateway.config import load_config, resolve_config_path

    try:
        load_config(args.config)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
