"""The on-Pi ranker: a verified ONNX bundle on one thread, and a fallback that never fails.

Three parts, each usable alone:

- ``Ranker``: one loaded bundle (docs/contracts.md section 5). The manifest is read and
  verified by ``gateway.decision.bundle`` (Ed25519 when keys are configured, the
  model's sha256 checked on the very bytes handed to onnxruntime) whose refusal
  reasons become the ranker's, then the runtime version; the session is tuned
  for a small CPU shared with BLE, MQTT and SQLite, and warmed up. Synchronous;
  every failure is a ``RankerError`` carrying a stable ``reason`` code.
- ``PopularFallback``: what sells in this zone at this hour, counted from the
  lanes' checkouts and seeded from HQ's popular lists in the manifest.
- ``DecisionRanker``: what the decision flow awaits. Inference runs on ONE
  dedicated thread; a missing, corrupt or failing model never raises: it is
  logged once, counted, and the answer comes from the fallback. ``load()`` swaps
  in a newer bundle while the old one keeps serving until the new one is ready.

No onnxruntime type leaves this module: callers get item ids, ``Recommendation``
and plain dicts.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.decision import bundle as bundle_reader  # `bundle` names a Path below
from gateway.decision.features import FeedRequest, ShopperFeatures, batch_feed
from gateway.errors import BundleError, RankerError
from gateway.log import get_logger

# The graph contract: input and output names with their onnxruntime type strings.
GRAPH_INPUTS = {
    "hist_items": "tensor(int64)",
    "hist_weights": "tensor(float)",
    "nbr_items": "tensor(int64)",
    "nbr_weights": "tensor(float)",
    "basket_items": "tensor(int64)",
    "context": "tensor(int64)",
}
GRAPH_OUTPUTS = {"top_items": "tensor(int64)", "top_scores": "tensor(float)"}
OUTPUT_NAMES = ["top_items", "top_scores"]
# The feed's sequence inputs and the feature_schema length that sizes each.
SEQUENCE_LENGTHS = {
    "hist_items": "hist_len",
    "hist_weights": "hist_len",
    "nbr_items": "nbr_len",
    "nbr_weights": "nbr_len",
    "basket_items": "basket_len",
}

# A Pi 4 has four cores shared with BLE scanning, MQTT and SQLite. One request is
# a few scatters/gathers over the catalogue, a TopK and a tiny network on a few
# hundred candidates: sub-millisecond work that gains little from a second thread
# and loses to contention beyond it. With 1, onnxruntime runs ops on the caller.
MAX_INTRA_OP_THREADS = 2
# The first run allocates the arena and prepacks weights; the next two show the
# steady state, so a load that will be slow at serving time is slow here instead.
WARMUP_RUNS = 3
# Inference latency percentiles are over this many recent requests (about a
# busy hour of one store's screens, kiosks and associates).
LATENCY_WINDOW = 1000
# Thread names (health and tests can tell where work ran).
INFERENCE_THREAD = "ranker-infer"
LOAD_THREAD = "ranker-load"
# onnxruntime: 3 = errors only (its warnings about unused initializers would
# otherwise land on stderr, outside structlog).
ORT_LOG_SEVERITY_ERROR = 3

Source = Literal["model", "fallback"]
# Recommendation.reason when an experiment arm asked for the non-model answer
# (counted under "requested" in stats, not as fallbacks: nothing went wrong).
REASON_POPULAR_REQUESTED = "popular_requested"
REASON_NONE_REQUESTED = "none_requested"

# onnxruntime's own exceptions derive from Exception, not RuntimeError; these are
# the ones it raises on load and run, plus what pybind raises for bad feeds.
_ORT_STATE = ort.capi.onnxruntime_pybind11_state
ORT_ERRORS: tuple[type[BaseException], ...] = (
    _ORT_STATE.Fail,
    _ORT_STATE.InvalidArgument,
    _ORT_STATE.InvalidGraph,
    _ORT_STATE.InvalidProtobuf,
    _ORT_STATE.NoSuchFile,
    _ORT_STATE.NoModel,
    _ORT_STATE.NotFound,
    _ORT_STATE.NotImplemented,
    _ORT_STATE.RuntimeException,
    _ORT_STATE.EPFail,
    RuntimeError,
    ValueError,
    TypeError,
)


@dataclass(frozen=True)
class Recommendation:
    """What the decision flow gets: item ids best first, and where they came from."""

    items: tuple[str, ...]
    source: Source
    reason: str | None
    model_version: int | None = None


# --------------------------------------------------------------------------- bundle


def _runtime_version() -> tuple[int, ...]:
    return _version_tuple(ort.__version__)


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"1.32.0"`` -> (1, 32, 0); a dev or rc suffix on a part is ignored."""
    parts = []
    for part in str(text).split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"not a version: {text!r}")
    return tuple(parts)


def public_keys(keys: Sequence[Any] | None) -> list[Ed25519PublicKey] | None:
    """Trusted keys as Ed25519 keys (``bundle.public_keys``); ``bad_key`` if one is not."""
    try:
        return bundle_reader.public_keys(keys)
    except BundleError as exc:
        raise RankerError(exc.reason.value, str(exc)) from exc


def _read_manifest(bundle: Path, keys: list[Ed25519PublicKey] | None) -> dict[str, Any]:
    """The validated manifest (signed by a trusted key when keys are given), model sha checked."""
    try:
        return bundle_reader.read_manifest(bundle, keys)
    except BundleError as exc:
        raise RankerError(exc.reason.value, str(exc), str(bundle)) from exc


def _read_model(bundle: Path, manifest: Mapping[str, Any]) -> bytes:
    """The model's bytes, checked again against the manifest's sha256.

    The session is built from these very bytes, so the file cannot change
    between the check and the load.
    """
    try:
        return bundle_reader.model_bytes(bundle, manifest)
    except BundleError as exc:
        raise RankerError(exc.reason.value, str(exc), str(bundle)) from exc


def _check_runtime(manifest: Mapping[str, Any], where: str) -> None:
    wanted = (manifest.get("min_runtime") or {}).get("onnxruntime")
    if wanted is None:
        return
    try:
        ok = _runtime_version() >= _version_tuple(wanted)
    except ValueError as exc:
        raise RankerError("bad_manifest", "min_runtime.onnxruntime is no version", where) from exc
    if not ok:
        raise RankerError(
            "runtime_too_old",
            f"bundle needs onnxruntime {wanted}, this is {ort.__version__}",
            where,
        )


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for a small shared CPU: 1-2 intra-op threads, no spinning, sequential.

    Spinning threads would burn a whole core between requests that arrive a few
    per second; the BLE scanner and SQLite writer need it more.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(MAX_INTRA_OP_THREADS, int(threads)))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = ORT_LOG_SEVERITY_ERROR
    return opts


def _check_graph(session: ort.InferenceSession, manifest: Mapping[str, Any], where: str) -> None:
    """The graph speaks the contract: input/output names, types, and fixed lengths."""
    schema = manifest["feature_schema"]
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    for name, dtype in GRAPH_INPUTS.items():
        node = inputs.get(name)
        if node is None:
            problems.append(f"input {name} missing")
            continue
        if node.type != dtype:
            problems.append(f"input {name} is {node.type}, wants {dtype}")
        if len(node.shape) != 2:
            problems.append(f"input {name} has rank {len(node.shape)}, wants 2")
            continue
        width = 3 if name == "context" else schema[SEQUENCE_LENGTHS[name]]
        if isinstance(node.shape[1], int) and node.shape[1] != width:
            problems.append(f"input {name} is {node.shape[1]} wide, the schema says {width}")
    extra = sorted(set(inputs) - set(GRAPH_INPUTS))
    if extra:
        problems.append(f"unexpected inputs {extra}")
    for name, dtype in GRAPH_OUTPUTS.items():
        node = outputs.get(name)
        if node is None:
            problems.append(f"output {name} missing")
        elif node.type != dtype:
            problems.append(f"output {name} is {node.type}, wants {dtype}")
    if problems:
        raise RankerError("wrong_inputs", "; ".join(problems), where)


def padding_feed(manifest: Mapping[str, Any], batch: int = 1) -> dict[str, np.ndarray]:
    """A feed of nothing: every sequence padded, hour/dow/zone 0 (a cold shopper)."""
    schema = manifest["feature_schema"]
    pad = len(manifest["catalogue"])
    feed: dict[str, np.ndarray] = {}
    for name, length_key in SEQUENCE_LENGTHS.items():
        shape = (batch, schema[length_key])
        if name.endswith("_items"):
            feed[name] = np.full(shape, pad, dtype=np.int64)
        else:
            feed[name] = np.zeros(shape, dtype=np.float32)
    feed["context"] = np.zeros((batch, 3), dtype=np.int64)
    return feed


# --------------------------------------------------------------------------- Ranker


class Ranker:
    """One loaded, verified and warmed-up bundle. Thread-safe for ``recommend``."""

    def __init__(
        self,
        *,
        session: ort.InferenceSession,
        manifest: dict[str, Any],
        bundle_dir: Path,
        load_ms: float,
        warmup_ms: float,
    ) -> None:
        self._session = session
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.load_ms = load_ms
        self.warmup_ms = warmup_ms
        self._catalogue: list[str] = manifest["catalogue"]

    # -- loading

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        *,
        trusted_keys: Sequence[Any] | None = None,
        threads: int = 1,
    ) -> Ranker:
        """Read, verify, open and warm up a bundle; ``RankerError`` says why not.

        ``trusted_keys`` (hex strings, raw bytes or Ed25519 public keys): when
        given, ``manifest.sig`` must verify under one of them.
        """
        bundle = Path(bundle_dir)
        where = str(bundle)
        start = time.perf_counter()
        if not bundle.is_dir():
            raise RankerError("missing", "no such bundle directory", where)
        manifest = _read_manifest(bundle, public_keys(trusted_keys))
        _check_runtime(manifest, where)
        model = _read_model(bundle, manifest)
        try:
            session = ort.InferenceSession(
                model, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
            )
        except ORT_ERRORS as exc:
            raise RankerError("bad_onnx", _first_line(exc), where) from exc
        _check_graph(session, manifest, where)
        load_ms = (time.perf_counter() - start) * 1000
        warm_start = time.perf_counter()
        feed = padding_feed(manifest)
        try:
            for _ in range(WARMUP_RUNS):
                items, scores = session.run(OUTPUT_NAMES, feed)
        except ORT_ERRORS as exc:
            raise RankerError("warmup_failed", _first_line(exc), where) from exc
        if items.shape[0] != 1 or items.shape != scores.shape:
            raise RankerError(
                "wrong_inputs", f"outputs shaped {items.shape} and {scores.shape}", where
            )
        warmup_ms = (time.perf_counter() - warm_start) * 1000
        return cls(
            session=session,
            manifest=manifest,
            bundle_dir=bundle,
            load_ms=load_ms,
            warmup_ms=warmup_ms,
        )

    # -- what the manifest says

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def variant(self) -> str:
        return str(self.manifest.get("variant", ""))

    @property
    def catalogue_size(self) -> int:
        return len(self._catalogue)

    # -- ranking

    def feed(self, requests: Sequence[FeedRequest]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``requests`` (batch = len(requests)).

        Built by ``gateway.decision.features``, the code HQ trains and backtests
        with; a request it refuses (hour or dow out of range) is ``bad_request``.
        """
        try:
            return batch_feed(self.manifest, requests)
        except (ValueError, TypeError, KeyError) as exc:
            raise RankerError("bad_request", _first_line(exc), str(self.bundle_dir)) from exc

    def run(self, feed: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(top_items, top_scores)`` for a ready feed; ``RankerError`` on failure."""
        try:
            items, scores = self._session.run(
                OUTPUT_NAMES, feed if isinstance(feed, dict) else dict(feed)
            )
        except ORT_ERRORS as exc:
            raise RankerError("inference_failed", _first_line(exc), str(self.bundle_dir)) from exc
        return items, scores

    def recommend(
        self,
        features: ShopperFeatures | None,
        basket: Sequence[str],
        hour: int,
        dow: int,
        zone: str | None,
        k: int,
    ) -> list[str]:
        """Up to ``k`` item ids, best first; never one in ``basket``."""
        return self.recommend_batch([FeedRequest(features, basket, hour, dow, zone)], k)[0]

    def recommend_batch(self, requests: Sequence[FeedRequest], k: int) -> list[list[str]]:
        """``recommend`` for many requests in one run of the graph."""
        if not requests:
            return []
        items, scores = self.run(self.feed(requests))
        return [
            self._ids(items[row], scores[row], req.basket, k) for row, req in enumerate(requests)
        ]

    def _ids(
        self, items: np.ndarray, scores: np.ndarray, basket: Sequence[str], k: int
    ) -> list[str]:
        # The graph already masks the basket and padding; this is the runtime's
        # guarantee whatever graph it was handed (and a basket longer than
        # basket_len is truncated in the feed, so the graph cannot see it all).
        out: list[str] = []
        banned = set(basket)
        size = len(self._catalogue)
        for index, score in zip(items.tolist(), scores.tolist(), strict=True):
            if len(out) >= k:
                break
            if score != score or score == float("-inf"):  # NaN or masked
                continue
            if not 0 <= index < size:
                continue
            item = self._catalogue[index]
            if item in banned:
                continue
            banned.add(item)
            out.append(item)
        return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- fallback


class PopularFallback:
    """Popular items by (zone, hour), from checkouts seen here and HQ's popular lists.

    Tiers, most specific first: this zone at this hour, this zone, the store at
    this hour, the store, then HQ's lists for the hour and overall. Each tier
    keeps at most ``max_items`` counts (the least counted are pruned), so memory
    stays bounded whatever the catalogue.
    """

    # A store sells a few thousand distinct items a day; 2,000 per tier keeps
    # everything a top-k list could want at ~100 KB per tier.
    DEFAULT_MAX_ITEMS = 2000

    def __init__(self, *, max_items: int = DEFAULT_MAX_ITEMS) -> None:
        self._max_items = max_items
        self._counts: dict[tuple[str | None, int | None], Counter[str]] = {}
        self._seed_by_hour: dict[int, list[str]] = {}
        self._seed_overall: list[str] = []
        self.observed = 0

    def seed(self, popular: Any) -> bool:
        """Take HQ's ``popular`` lists from a manifest; False (and no change) if unusable."""
        if not isinstance(popular, dict):
            return False
        overall = popular.get("overall", [])
        by_hour = popular.get("by_hour", {})
        if not isinstance(overall, list) or not isinstance(by_hour, dict):
            return False
        seeded: dict[int, list[str]] = {}
        for hour, items in by_hour.items():
            h = _hour_or_none(hour)
            if h is not None and isinstance(items, list):
                seeded[h] = [str(i) for i in items]
        self._seed_overall = [str(i) for i in overall]
        self._seed_by_hour = seeded
        return True

    def observe_purchase(self, zone: str | None, hour: int, items: Iterable[str]) -> None:
        """Count one checkout's items for its zone and hour (and the wider tiers)."""
        h = _hour_or_none(hour)
        keys = {(zone, h), (zone, None), (None, h), (None, None)}
        bought = list(dict.fromkeys(items))  # an item bought twice counts once per checkout
        if not bought:
            return
        self.observed += 1
        for key in keys:
            counter = self._counts.setdefault(key, Counter())
            counter.update(bought)
            if len(counter) > 2 * self._max_items:
                # Prune in one go at twice the cap, so the cost is amortised.
                self._counts[key] = Counter(dict(counter.most_common(self._max_items)))

    def recommend(self, basket: Iterable[str], hour: int, zone: str | None, k: int) -> list[str]:
        """Up to ``k`` popular item ids for this zone and hour, never one in ``basket``."""
        banned = set(basket)
        out: list[str] = []
        h = _hour_or_none(hour)
        want = k + len(banned)
        for tier in self._tiers(zone, h, want):
            for item in tier:
                if item not in banned:
                    banned.add(item)
                    out.append(item)
                    if len(out) >= k:
                        return out
        return out

    def _tiers(self, zone: str | None, hour: int | None, want: int) -> Iterable[Iterable[str]]:
        for key in ((zone, hour), (zone, None), (None, hour), (None, None)):
            counter = self._counts.get(key)
            if counter:
                yield (item for item, _ in heapq.nlargest(want, counter.items(), key=itemgetter(1)))
        if hour is not None:
            yield self._seed_by_hour.get(hour, [])
        yield self._seed_overall


def _hour_or_none(hour: Any) -> int | None:
    try:
        h = int(hour)
    except (TypeError, ValueError):
        return None
    return h if 0 <= h <= 23 else None


# --------------------------------------------------------------------------- decision


RankerFactory = Callable[..., Ranker]


class DecisionRanker:
    """The model when there is a good one, popular items otherwise; never raises.

    ``bundle_dir`` is loaded by ``start()``; ``load()`` swaps in newer bundles
    later (HQ's model updates). ``ranker_factory`` builds a ``Ranker`` from a
    bundle directory (``Ranker.load`` unless a test hands in one that wraps it).
    """

    def __init__(
        self,
        bundle_dir: str | Path | None = None,
        *,
        trusted_keys: Sequence[Any] | None = None,
        threads: int = 1,
        fallback: PopularFallback | None = None,
        ranker_factory: RankerFactory = Ranker.load,
    ) -> None:
        self.bundle_dir = Path(bundle_dir) if bundle_dir is not None else None
        self.fallback = fallback if fallback is not None else PopularFallback()
        self._log = get_logger("ranker")
        self._key_problem: str | None = None
        try:
            self._trusted_keys = public_keys(trusted_keys)
        except RankerError as exc:
            # Fail closed: a configured key that cannot be used must not turn
            # into "no signature needed". Every load is refused until fixed.
            self._trusted_keys = None
            self._key_problem = exc.detail
            self._log.error("ranker_trusted_key_invalid", detail=exc.detail)
        self._threads = threads
        self._factory = ranker_factory
        # One thread for inference: requests queue in order, onnxruntime never
        # competes with itself, and the event loop never waits on a model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=INFERENCE_THREAD)
        # Loads get their own thread so a slow load never delays live requests.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=LOAD_THREAD)
        self._load_lock = asyncio.Lock()
        self._ranker: Ranker | None = None
        self._sources: Counter[str] = Counter()
        self._fallback_reasons: Counter[str] = Counter()
        self._requested: Counter[str] = Counter()
        self._load_failures: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._logged_failures: set[tuple[int, str]] = set()
        self._logged_no_model = False
        self._last_error: dict[str, str] | None = None
        self._closed = False

    @property
    def ranker(self) -> Ranker | None:
        """The bundle serving now, if any."""
        return self._ranker

    @property
    def version(self) -> int | None:
        """The serving model's version; None while the fallback answers everything."""
        ranker = self._ranker
        return ranker.version if ranker else None

    # -- bundles

    async def start(self) -> bool:
        """Load the configured bundle, if any; never raises (False: the fallback serves)."""
        if self.bundle_dir is None:
            self._log.warning("ranker_no_bundle_configured")
            return False
        return await self.load(self.bundle_dir)

    async def load(self, bundle_dir: str | Path) -> bool:
        """Swap in the bundle at ``bundle_dir`` if it is newer and loads; never raises.

        The running bundle (if any) serves until the new one is warmed up, and
        keeps serving if the new one fails or is not newer.
        """
        bundle = Path(bundle_dir)
        loop = asyncio.get_running_loop()
        async with self._load_lock:
            current = self._ranker
            manifest: dict[str, Any] | None = None
            try:
                if self._key_problem is not None:
                    raise RankerError("bad_key", self._key_problem, str(bundle))
                # The manifest first: an old bundle is refused before onnxruntime
                # parses anything, and a failed load can still seed the fallback.
                manifest = await loop.run_in_executor(
                    self._loader, _read_manifest, bundle, self._trusted_keys
                )
                if current is not None and manifest["version"] <= current.version:
                    raise RankerError(
                        "not_newer",
                        f"version {manifest['version']} is not above {current.version}",
                        str(bundle),
                    )
                ranker = await loop.run_in_executor(
                    self._loader,
                    functools.partial(
                        self._factory,
                        bundle,
                        trusted_keys=self._trusted_keys,
                        threads=self._threads,
                    ),
                )
            except RankerError as exc:
                self._load_failed(exc, manifest if current is None else None)
                return False
            except Exception as exc:  # noqa: BLE001 — a bad bundle must never take the gateway down
                detail = f"{type(exc).__name__}: {exc}"[:300]
                self._load_failed(RankerError("load_failed", detail, str(bundle)), None)
                return False
            self._ranker = ranker
            self.fallback.seed(ranker.manifest.get("popular"))
            self._logged_no_model = False
            self._log.info(
                "ranker_loaded",
                bundle=str(bundle),
                version=ranker.version,
                variant=ranker.variant,
                catalogue_size=ranker.catalogue_size,
                replaced=current.version if current else None,
                load_ms=round(ranker.load_ms, 1),
                warmup_ms=round(ranker.warmup_ms, 1),
            )
            return True

    def _load_failed(self, exc: RankerError, manifest: Mapping[str, Any] | None) -> None:
        self._load_failures[exc.reason] += 1
        self._last_error = {"reason": exc.reason, "where": exc.where, "detail": exc.detail}
        if manifest is not None:
            # No model at all: HQ's popular lists from a verified manifest (signature
            # and model sha) beat an empty fallback, even when onnxruntime refuses
            # the model itself.
            self.fallback.seed(manifest.get("popular"))
        serving = self._ranker.version if self._ranker else None
        self._log.warning(
            "ranker_load_refused" if exc.reason == "not_newer" else "ranker_load_failed",
            reason=exc.reason,
            where=exc.where,
            detail=exc.detail,
            serving_version=serving,
        )

    # -- requests

    async def recommend(
        self,
        features: Any,
        basket: Sequence[str],
        hour: int,
        dow: int,
        zone: str | None,
        k: int,
    ) -> Recommendation:
        """Up to ``k`` items for this shopper, never one in ``basket``; never raises."""
        ranker = self._ranker
        if ranker is None:
            if not self._logged_no_model:
                self._logged_no_model = True
                self._log.warning("ranker_no_model", last_error=self._last_error)
            return self._fall_back("no_model", basket, hour, zone, k)
        loop = asyncio.get_running_loop()
        request = FeedRequest(features, tuple(basket), hour, dow, zone)
        try:
            items, infer_ms = await loop.run_in_executor(
                self._executor, _timed_recommend, ranker, request, k
            )
        except RankerError as exc:
            self._inference_failed(ranker, exc.reason, exc.detail)
            return self._fall_back(exc.reason, basket, hour, zone, k)
        except Exception as exc:  # noqa: BLE001 — a request must be answered whatever broke
            self._inference_failed(ranker, "inference_failed", f"{type(exc).__name__}: {exc}")
            return self._fall_back("inference_failed", basket, hour, zone, k)
        self._latencies.append(infer_ms)
        if not items:
            return self._fall_back("model_empty", basket, hour, zone, k)
        self._sources["model"] += 1
        return Recommendation(
            items=tuple(items),
            source="model",
            reason=None,
            model_version=ranker.version,
        )

    def popular(self, basket: Sequence[str], hour: int, zone: str | None, k: int) -> Recommendation:
        """Popular items on purpose (an experiment arm), not because the model failed."""
        self._requested["popular"] += 1
        return Recommendation(
            items=tuple(self.fallback.recommend(basket, hour, zone, k)),
            source="fallback",
            reason=REASON_POPULAR_REQUESTED,
        )

    def empty(self) -> Recommendation:
        """Nothing on purpose (an experiment's no-recommendation arm)."""
        self._requested["none"] += 1
        return Recommendation(items=(), source="fallback", reason=REASON_NONE_REQUESTED)

    def observe_purchase(self, zone: str | None, hour: int, items: Iterable[str]) -> None:
        """A lane's checkout: feeds the fallback's popularity counts."""
        self.fallback.observe_purchase(zone, hour, items)

    def _inference_failed(self, ranker: Ranker, reason: str, detail: str) -> None:
        detail = detail[:300]
        self._last_error = {"reason": reason, "where": str(ranker.bundle_dir), "detail": detail}
        key = (ranker.version, reason)
        if key in self._logged_failures:
            return  # logged once per bundle and reason; the rest are counted in stats()
        self._logged_failures.add(key)
        fields = {
            "reason": reason,
            "where": str(ranker.bundle_dir),
            "version": ranker.version,
            "detail": detail,
        }
        if reason == "bad_request":
            # The caller's request, not the model: the model keeps serving others.
            self._log.warning("ranker_bad_request", **fields)
        else:
            self._log.error("ranker_inference_failed", **fields)

    def _fall_back(
        self,
        reason: str,
        basket: Sequence[str],
        hour: int,
        zone: str | None,
        k: int,
    ) -> Recommendation:
        self._sources["fallback"] += 1
        self._fallback_reasons[reason] += 1
        items = self.fallback.recommend(basket, hour, zone, k)
        return Recommendation(
            items=tuple(items),
            source="fallback",
            reason=reason,
            model_version=None,
        )

    # -- health and shutdown

    def stats(self) -> dict[str, Any]:
        """Health figures: model, sources, fallback reasons, latency, last error."""
        ranker = self._ranker
        window = sorted(self._latencies)
        return {
            "model_version": ranker.version if ranker else None,
            "variant": ranker.variant if ranker else None,
            "catalogue_size": ranker.catalogue_size if ranker else None,
            "bundle": str(ranker.bundle_dir) if ranker else None,
            "sources": {"model": self._sources["model"], "fallback": self._sources["fallback"]},
            "fallback_reasons": dict(self._fallback_reasons),
            "requested": dict(self._requested),
            "load_failures": dict(self._load_failures),
            "inference_ms": {
                "p50": _percentile(window, 0.50),
                "p99": _percentile(window, 0.99),
                "count": len(window),
            },
            "load_ms": round(ranker.load_ms, 2) if ranker else None,
            "warmup_ms": round(ranker.warmup_ms, 2) if ranker else None,
            "fallback_observed": self.fallback.observed,
            "last_error": dict(self._last_error) if self._last_error else None,
        }

    def close(self) -> None:
        """Stop the threads; a queued request is dropped, one running finishes."""
        if self._closed:
            return
        self._closed = True
        self._loader.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)


def _timed_recommend(ranker: Ranker, request: FeedRequest, k: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    items = ranker.recommend_batch([request], k)[0]
    return items, (time.perf_counter() - start) * 1000


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(q * (len(ordered) - 1)))
    return round(ordered[index], 3)
