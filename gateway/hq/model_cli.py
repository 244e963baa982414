"""``store-gateway model train`` and ``model recommend`` (docs/contracts.md sections 1 and 5).

``train`` reads an Orders CSV, trains the ranker (gateway.hq.training, whose
numpy/onnx needs are imported only here, lazily) and writes a bundle.
``recommend`` is the backtest: it scores a Requests JSONL with a bundle's
graph exactly as a store would, building each shopper's features from the
orders with the same code HQ uses for profiles and passing them through their
JSON attribute form, so rounding is measured too. Every failure is one clear
line on stderr and exit status 1; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import CliError

# Requests are small objects; a line longer than this is not a request.
MAX_REQUEST_LINE_CHARS = 64 * 1024
MAX_BASKET_ITEMS = 1000
# Bad request lines described individually before only counting.
MAX_PROBLEMS_SHOWN = 20
BATCH = 256


def run(args: argparse.Namespace) -> int:
    """``store-gateway model train|recommend`` (the CLI's parser is gateway/cli.py's)."""
    commands = {"train": _cmd_train, "recommend": _cmd_recommend}
    return int(commands[args.model_command](args))


def _run(fn: Any, args: argparse.Namespace) -> int:
    try:
        return int(fn(args))
    except CliError as exc:
        print(str(exc), file=sys.stderr)
        return 1


def _cmd_train(args: argparse.Namespace) -> int:
    return _run(_train, args)


def _cmd_recommend(args: argparse.Namespace) -> int:
    return _run(_recommend, args)


# -- train ---------------------------------------------------------------------------------


def _load_signing_key(path: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"--signing-key {path}: cannot read: {exc.strerror or exc}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CliError(
            f"--signing-key {path}: not an unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"--signing-key {path}: not an Ed25519 key")
    return key


def _next_version(out: Path) -> int:
    for candidate in (out, out / "fp32", out / "int8"):
        try:
            doc = json.loads((candidate / "manifest.json").read_text(encoding="utf-8"))
            return int(doc["version"]) + 1
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 1


def _read_orders(path: str) -> Any:
    from gateway.errors import OrdersError
    from gateway.hq.orders import read_orders

    try:
        orders = read_orders(path)
    except OrdersError as exc:
        raise CliError(str(exc)) from None
    for problem in orders.problems:
        print(problem, file=sys.stderr)
    if orders.bad_rows > len(orders.problems):
        print(f"{path}: {orders.bad_rows} rows skipped in all", file=sys.stderr)
    return orders


def _train(args: argparse.Namespace) -> int:
    if args.k < 1 or args.k > 1000:
        raise CliError("--k: must be between 1 and 1000")
    if args.version is not None and args.version < 0:
        raise CliError("--version: must be a non-negative integer")
    key = _load_signing_key(args.signing_key) if args.signing_key else None
    try:
        import onnx  # noqa: F401  (only to fail early with a useful message)
    except ImportError:
        raise CliError(
            "model train needs the training extra: pip install 'store-gateway[train]'"
        ) from None
    from gateway.errors import BundleError
    from gateway.hq import training
    from gateway.hq.bundles import write_bundle

    orders = _read_orders(args.orders)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    log(f"{args.orders}: {orders.summary()}")
    out = Path(args.out)
    version = args.version if args.version is not None else _next_version(out)
    zones = tuple(z.strip() for z in args.zones.split(",") if z.strip())
    if len(set(zones)) != len(zones):
        raise CliError("--zones: duplicate zone names")
    config = training.TrainConfig(k=args.k, seed=args.seed, zones=zones)
    try:
        ranker = training.train(orders.by_user, config, log=log)
    except ValueError as exc:
        raise CliError(f"{args.orders}: cannot train: {exc}") from None
    variants = ("fp32", "int8") if args.variant == "both" else (args.variant,)
    for variant in variants:
        target = out / variant if args.variant == "both" else out
        manifest = training.build_manifest(ranker, variant, version)
        try:
            model = training.build_graph(ranker, variant)
            write_bundle(target, model, manifest, key)
        except (BundleError, OSError) as exc:
            raise CliError(f"{target}: cannot write the bundle: {exc}") from None
        size = (target / "model.onnx").stat().st_size + (target / "manifest.json").stat().st_size
        log(f"{target}: {variant} bundle version {version}, {size / 1e6:.2f} MB")
    if args.profiles_out:
        from gateway.hq.features import features_to_attributes

        try:
            with open(args.profiles_out, "w", encoding="utf-8") as handle:
                for shopper, feats in ranker.profiles.items():
                    attributes = {"features": features_to_attributes(feats)}
                    doc = {"shopper": shopper, "attributes": attributes}
                    handle.write(json.dumps(doc, separators=(",", ":")) + "\n")
        except OSError as exc:
            raise CliError(f"--profiles-out {args.profiles_out}: {exc.strerror or exc}") from None
    return 0


# -- recommend -----------------------------------------------------------------------------


def _parse_request(doc: Any) -> tuple[str, list[str], int, int, str | None]:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    shopper = doc.get("shopper")
    if isinstance(shopper, bool) or not isinstance(shopper, str | int):
        raise ValueError('"shopper" must be a string')
    basket = doc.get("basket", [])
    if not isinstance(basket, list) or len(basket) > MAX_BASKET_ITEMS:
        raise ValueError(f'"basket" must be a list of at most {MAX_BASKET_ITEMS} item ids')
    items = []
    for item in basket:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError('"basket" items must be strings')
        items.append(str(item))
    hour, dow = doc.get("hour"), doc.get("dow")
    if isinstance(hour, bool) or not isinstance(hour, int) or not 0 <= hour <= 23:
        raise ValueError('"hour" must be an integer 0..23')
    if isinstance(dow, bool) or not isinstance(dow, int) or not 0 <= dow <= 6:
        raise ValueError('"dow" must be an integer 0..6')
    zone = doc.get("zone")
    if zone is not None and not isinstance(zone, str):
        raise ValueError('"zone" must be a string')
    return str(shopper), items, hour, dow, zone


def read_requests(path: str) -> list[tuple[str, list[str], int, int, str | None]]:
    """Every request of a JSONL file; CliError listing bad lines (with numbers) if any."""
    try:
        handle: TextIO = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    requests, problems, bad = [], [], 0
    with handle:
        line_no = 0
        while True:
            line = handle.readline(MAX_REQUEST_LINE_CHARS + 1)
            if not line:
                break
            line_no += 1
            if len(line) > MAX_REQUEST_LINE_CHARS and not line.endswith("\n"):
                while True:
                    rest = handle.readline(MAX_REQUEST_LINE_CHARS)
                    if not rest or rest.endswith("\n"):
                        break
                bad += 1
                problems.append(
                    f"{path}: line {line_no}: longer than {MAX_REQUEST_LINE_CHARS} chars"
                )
                continue
            if not line.strip():
                continue
            try:
                requests.append(_parse_request(json.loads(line)))
            except (ValueError, RecursionError) as exc:
                bad += 1
                problems.append(f"{path}: line {line_no}: {exc}")
    if bad:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"\n{path}: {bad - len(shown)} more bad lines" if bad > len(shown) else ""
        raise CliError("\n".join(shown) + more)
    if not requests:
        raise CliError(f"{path}: no requests (empty file)")
    return requests


def _fallback(
    popular: dict[str, Any], hour: int, banned: set[str], chosen: list[str], top: int
) -> None:
    for item in [*popular.get("by_hour", {}).get(str(hour), []), *popular.get("overall", [])]:
        if len(chosen) >= top:
            return
        if item not in banned and item not in chosen:
            chosen.append(item)


def _recommend(args: argparse.Namespace) -> int:
    from gateway.decision.bundle import model_bytes, read_manifest
    from gateway.decision.features import FeedRequest, batch_feed, features_from_attributes
    from gateway.errors import BundleError
    from gateway.hq.features import ProfileModel, build_profiles, features_to_attributes
    from gateway.hq.training import histories_of

    try:
        manifest = read_manifest(args.bundle)
        data = model_bytes(args.bundle, manifest)
    except BundleError as exc:
        raise CliError(str(exc)) from None
    top = manifest["k"] if args.top is None else args.top
    if top < 1 or top > 1000:
        raise CliError("--top: must be between 1 and 1000")
    requests = read_requests(args.requests)
    orders = _read_orders(args.orders)
    try:
        profile_model = ProfileModel.from_dict(manifest["feature_schema"]["profile_model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{args.bundle}: feature_schema.profile_model unusable: {exc!r}") from None
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own untyped errors)
        raise CliError(f"{args.bundle}: onnxruntime cannot load the model: {exc}") from None
    wanted = {r[0] for r in requests}
    profiles = build_profiles(histories_of(orders.by_user), profile_model)
    # what a store receives: the attributes' JSON form, rounded, then parsed back
    features = {
        s: features_from_attributes(json.loads(json.dumps(features_to_attributes(f))))
        for s, f in profiles.items()
        if s in wanted
    }
    catalogue = manifest["catalogue"]
    popular = manifest["popular"]
    out = sys.stdout
    for start in range(0, len(requests), BATCH):
        chunk = requests[start : start + BATCH]
        known = [(j, r) for j, r in enumerate(chunk) if features.get(r[0]) is not None]
        answers: dict[int, list[str]] = {}
        if known:
            feeds = batch_feed(
                manifest,
                [FeedRequest(features[r[0]], r[1], r[2], r[3], r[4]) for _, r in known],
            )
            try:
                items, scores = session.run(["top_items", "top_scores"], feeds)
            except Exception as exc:  # noqa: BLE001  (onnxruntime's errors are untyped)
                raise CliError(f"{args.bundle}: inference failed: {exc}") from None
            for row, (j, r) in enumerate(known):
                banned = set(r[1])
                chosen = [
                    catalogue[i]
                    for i, s in zip(items[row].tolist(), scores[row].tolist(), strict=True)
                    if s > float("-inf") and 0 <= i < len(catalogue) and catalogue[i] not in banned
                ][:top]
                own = features[r[0]]
                for item, _ in own.hist if own is not None else ():
                    if len(chosen) >= top:
                        break
                    if item not in banned and item not in chosen:
                        chosen.append(item)
                answers[j] = chosen
        for j, (shopper, basket, hour, _dow, _zone) in enumerate(chunk):
            chosen = answers.get(j, [])
            _fallback(popular, hour, set(basket), chosen, top)
            out.write(json.dumps({"shopper": shopper, "items": chosen[:top]}) + "\n")
    out.flush()
    return 0
