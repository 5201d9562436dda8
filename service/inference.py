"""Inference: the one service module that imports torch.

- `ModelCache`: checkpoints loaded once, keyed by their sha256, LRU-bounded by
  `settings.model_cache_size`, thread-safe (one load per key even under concurrent requests).
- `predict(loaded, x, ...)`: a batched forward under `torch.inference_mode`, turned into the JSON
  the API returns (per sequence: class and probabilities, regressed values or per-step outputs;
  per-layer firing rates; optionally the spike raster of one layer).
- `InferencePool`: the dedicated executor of predict forwards (workers x torch threads sized to
  the cores, bounded queue: `QueueFull` when it is full).
- `StreamStore`: streaming sessions (in memory, TTL, bounded count) carrying the network's state
  across chunks; after the last chunk the prediction equals the one-shot one.
- `te_similarity(loaded)`: cosine similarity between the TE vectors of every pair of timesteps
  (the paper's Fig. 7) for CE-LIF models.
- `task_samples(spec, split, n)`: a few sequences of a job's task with their labels (dashboard).

Everything here takes and returns numpy arrays or plain Python values; callers never see tensors.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from celif_core.checkpoint import load_model
from celif_core.spec import JobSpec

RETURNABLE = ("probabilities", "firing_rates", "spikes")


@dataclass
class LoadedModel:
    sha256: str
    model: torch.nn.Module
    spec: JobSpec
    metadata: dict[str, Any]
    load_seconds: float
    # predict_batching="auto": whether gathering concurrent requests into one forward measured
    # cheaper per sequence for this model (`calibrate_batching`); None: not measured.
    batching: bool | None = None
    max_batch: int | None = None  # sequences per batched forward, where batching
    calibration: dict[str, float] | None = None
    # predict_synapses="auto": per hidden layer, the GEMM's and the event-driven CPU seconds
    synapse_calibration: dict[int, dict[str, float]] | None = None


class ModelCache:
    """LRU of loaded models keyed by checkpoint sha256; at most `capacity` kept."""

    def __init__(
        self,
        capacity: int,
        loader: Callable[[Path], tuple] | None = None,
        on_load: Callable[[LoadedModel], None] | None = None,
    ):
        self.capacity = capacity
        self._loader = loader or (lambda path: load_model(path, device="cpu"))
        self._on_load = on_load  # run once per load, before the model is shared
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, sha256: str, path: Path) -> LoadedModel:
        with self._lock:
            item = self._items.get(sha256)
            if item is not None:
                self._items.move_to_end(sha256)
                self.hits += 1
                return item
            key_lock = self._key_locks.setdefault(sha256, threading.Lock())
        with key_lock:  # one load per checkpoint; others wait for it
            with self._lock:
                item = self._items.get(sha256)
                if item is not None:
                    self._items.move_to_end(sha256)
                    self.hits += 1
                    return item
            start = time.perf_counter()
            model, spec, metadata = self._loader(path)
            model.eval()
            if not isinstance(spec, JobSpec):
                spec = JobSpec.model_validate(spec)
            item = LoadedModel(sha256, model, spec, metadata, time.perf_counter() - start)
            if self._on_load is not None:
                self._on_load(item)
            with self._lock:
                self.misses += 1
                self._items[sha256] = item
                self._items.move_to_end(sha256)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
                self._key_locks.pop(sha256, None)
            return item

    def peek(self, sha256: str) -> LoadedModel | None:
        """The loaded model if it is cached (no load, no LRU update)."""
        with self._lock:
            return self._items.get(sha256)

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# ----------------------------------------------------------------------------- responses
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def format_outputs(kind: str, output: np.ndarray, want_probs: bool) -> list[dict[str, Any]]:
    """Per-sequence predictions from the readout `output` ([N, C] or [N, T, C]): whole arrays
    converted with `tolist()`, one dict per sequence (no per-element Python loop)."""
    n = output.shape[0]
    if kind in ("classification", "sequence"):
        probs = _softmax(output.astype(np.float64))
        key = "class" if kind == "classification" else "classes"
        classes = probs.argmax(-1).tolist()
        if not want_probs:
            return [{key: c} for c in classes]
        listed = (probs if kind == "classification" else probs.round(6)).tolist()
        return [{key: c, "probabilities": p} for c, p in zip(classes, listed, strict=True)]
    if kind == "regression":
        values = output.reshape(n, -1)
        if values.shape[1] == 1:
            return [{"value": v} for v in values[:, 0].tolist()]
        return [{"value": v} for v in values.tolist()]
    # sequence_regression: one value per step
    return [{"values": v} for v in output.reshape(n, output.shape[1], -1)[:, :, 0].tolist()]


def output_array(kind: str, output: np.ndarray) -> np.ndarray:
    """The predictions as one array (the NPY answer): probabilities [N, C] / [N, T, C] of a
    classification / sequence task (float64, the JSON answer's values), regressed values
    [N, D] (float32), per-step values [N, T] (float32)."""
    n = output.shape[0]
    if kind in ("classification", "sequence"):
        return _softmax(output.astype(np.float64))
    if kind == "regression":
        return output.reshape(n, -1)
    return output.reshape(n, output.shape[1], -1)[:, :, 0]


def sparse_raster(spikes: np.ndarray) -> dict[str, Any]:
    """A [T, N] 0/1 raster as spike events (what a raster plot draws)."""
    t_idx, n_idx = np.nonzero(spikes)
    return {
        "steps": int(spikes.shape[0]),
        "neurons": int(spikes.shape[1]),
        "t": t_idx.astype(int).tolist(),
        "neuron": n_idx.astype(int).tolist(),
    }


def num_spiking_layers(model: torch.nn.Module, spec: JobSpec) -> int:
    return 0 if spec.model.neuron == "lstm" else len(spec.model.hidden)


def _response(
    spec: JobSpec,
    output: np.ndarray,
    rates: list[float] | None,
    spikes: list[torch.Tensor] | None,
    *,
    returns: frozenset[str],
    spikes_layer: int,
    as_array: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": spec.kind}
    if as_array:
        body["array"] = output_array(spec.kind, output)
    else:
        body["predictions"] = format_outputs(spec.kind, output, "probabilities" in returns)
    if "firing_rates" in returns:
        body["firing_rates"] = rates or []
    if spikes and "spikes" in returns and not as_array:
        raster = _pick_layer(spikes, spikes_layer).float().numpy()  # [N, T, neurons]
        body["spikes"] = {
            "layer": spikes_layer,
            "rasters": [sparse_raster(raster[i]) for i in range(raster.shape[0])],
        }
    return body


def predict(
    loaded: LoadedModel,
    x: np.ndarray,
    *,
    returns: frozenset[str] = frozenset(("probabilities", "firing_rates")),
    spikes_layer: int = 0,
    as_array: bool = False,
) -> dict[str, Any]:
    """One batched forward of `x` [N, T, F] (float32) and the JSON response body (with
    `as_array`, the predictions as one array under "array" instead: the NPY answer)."""
    spec = loaded.spec
    want_spikes = "spikes" in returns and spec.model.neuron != "lstm" and not as_array
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        # record_spikes=True records every layer for every sequence; one layer is returned.
        out = loaded.model.run(xt, record_spikes=want_spikes)
        output = out.output.float().numpy()
        rates = [float(r) for r in (out.firing_rates or [])]
        return _response(
            spec,
            output,
            rates,
            out.spikes if want_spikes else None,
            returns=returns,
            spikes_layer=spikes_layer,
            as_array=as_array,
        )


@dataclass(frozen=True)
class PredictOptions:
    returns: frozenset[str]
    spikes_layer: int
    as_array: bool


def predict_many(
    loaded: LoadedModel, xs: list[np.ndarray], options: list[PredictOptions]
) -> list[dict[str, Any]]:
    """Several requests' inputs (same T and F) as one forward, split back per request: the
    same bodies as `predict` on each alone (the firing rates are counted over each request's
    own rows: spike counts are integers, exact in float32)."""
    spec = loaded.spec
    spiking = spec.model.neuron != "lstm"
    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs), dtype=np.float32))
        out = loaded.model.run(xt, record_spikes=spiking)
        output = out.output.float().numpy()
        bodies, start = [], 0
        for x, opt in zip(xs, options, strict=True):
            rows = slice(start, start + x.shape[0])
            start = rows.stop
            spikes = [s[rows] for s in out.spikes] if out.spikes else None
            rates = [float(s.float().mean()) for s in spikes] if spikes else []
            bodies.append(
                _response(
                    spec,
                    output[rows],
                    rates,
                    spikes,
                    returns=opt.returns,
                    spikes_layer=opt.spikes_layer,
                    as_array=opt.as_array,
                )
            )
        return bodies


# ----------------------------------------------------------------------------- batching on CPU
# On the CPU a batch of B sequences costs B x the matrix products but the ~90 torch calls of a
# forward only once, and its activations (T x B x neurons) must stay in the cache. Measured,
# 784 steps, CPU per sequence (minimum of repeats, one thread): the paper-size [64, 256, 256]
# 1.8-1.9 ms alone, 1.3-1.5 at B=3..8, 2.7-2.8 at B=16; [64, 88, 88] 0.89 -> 0.44 at B=16;
# [64, 64] 0.47 -> 0.20. So "auto" measures each model once, when it is loaded, and batches
# it (up to the best batch size measured) only where that gains.
CALIBRATION_SIZES = (1, 2, 4, 8)
CALIBRATION_REPEATS = 5
CALIBRATION_MAX_FORWARD_S = 0.05  # a forward over this at B=1 is compute-bound: not batched
BATCHING_GAIN = 0.8  # batch when a sequence costs at most this fraction of its cost alone
BATCH_SIZE_SLACK = 1.05  # sizes within 5 % of the cheapest per sequence count as as cheap


def batching_gains(alone_s: float, batched_s: float) -> bool:
    """Whether CPU time per sequence `batched_s` (in a batch) is worth gathering requests for
    against `alone_s` (one sequence per forward)."""
    return batched_s <= BATCHING_GAIN * alone_s


def calibrate_batching(loaded: LoadedModel) -> None:
    """Set `loaded.batching` and `loaded.max_batch`: the CPU time (this thread's) per sequence
    of forwards of 1, 2, 4, 8 sequences of the model's own T and F, the minimum of a few each
    (other load only ever adds to it); batching where the best size gains, up to that size.
    Answers are the same either way (batched == alone); only the speed depends on it."""
    spec = loaded.spec
    rng = np.random.default_rng(0)
    size = max(CALIBRATION_SIZES)
    x = torch.from_numpy(rng.random((size, spec.seq_len, spec.input_size), dtype=np.float32))
    spiking = spec.model.neuron != "lstm"

    def cpu_of(batch: torch.Tensor) -> float:
        start = time.thread_time()
        loaded.model.run(batch, record_spikes=spiking)
        return time.thread_time() - start

    per_sequence: dict[int, float] = {}
    with torch.inference_mode():
        first = cpu_of(x[:1])  # also the warm-up
        if first > CALIBRATION_MAX_FORWARD_S:
            loaded.batching, loaded.max_batch = False, 1
            loaded.calibration = {"alone_s": first}
            return
        # Rounds over every size, not every repeat of one size in a row: a burst of other
        # load then inflates one sample of each size, not all samples of one (seen on the
        # 2-core machine: "alone" measured 2.4 ms once for a 1.8 ms forward, and batching a
        # model it slows was switched on).
        for _ in range(CALIBRATION_REPEATS):
            for b in CALIBRATION_SIZES:
                cost = cpu_of(x[:b]) / b
                per_sequence[b] = min(per_sequence.get(b, cost), cost)
    # The largest size within BATCH_SIZE_SLACK of the cheapest: what a batch saves outside the
    # forward (one pool hop, one response pass) is not in these timings, and near the minimum
    # the timings differ by their noise.
    cheapest = min(per_sequence.values())
    best = max(b for b, cost in per_sequence.items() if cost <= BATCH_SIZE_SLACK * cheapest)
    alone = per_sequence[1]
    loaded.calibration = {"alone_s": alone, "batched_per_sequence_s": per_sequence[best]}
    loaded.batching = best > 1 and batching_gains(alone, per_sequence[best])
    loaded.max_batch = best if loaded.batching else 1


# ----------------------------------------------------------------------------- synapses on CPU
# A hidden layer fed by spikes can take its synaptic current event-driven (celif_core.kernels.
# synapses: an add per input spike instead of a multiply-add per input). Whether that is faster
# depends on the layer's size and firing rate and on the CPU (`bench/synapses.py`, one thread,
# 784 steps: 256 -> 256 at rate 0.22 0.86 ms against the GEMM's 1.16 ms; 88 -> 88 at 0.4 0.16
# against 0.14), so "auto" times both on each layer's own spikes once, at load.
EVENT_SYNAPSE_GAIN = 0.9  # event-driven where it takes at most this fraction of the GEMM's time


def calibrate_event_synapses(loaded: LoadedModel, mode: str = "auto") -> None:
    """Choose `loaded.model`'s event-driven layers: "dense" none, "event" every layer fed by
    spikes, "auto" those where it measured faster (CPU time of this thread, the minimum of a few, on
    the spikes of a forward of random inputs of the model's T and F). Records the times in
    `loaded.synapse_calibration`. Answers agree with the GEMM's to float rounding either way."""
    model, spec = loaded.model, loaded.spec
    candidates = [] if spec.model.neuron == "lstm" else list(range(1, len(spec.model.hidden)))
    if mode == "dense" or not candidates:
        return
    if mode == "event":
        model.use_event_synapses(candidates)
        return
    from celif_core.kernels.synapses import event_linear
    from celif_core.models import linear_rows

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((2, spec.seq_len, spec.input_size), dtype=np.float32))

    def cpu_of(fn: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(CALIBRATION_REPEATS):
            start = time.thread_time()
            fn()
            best = min(best, time.thread_time() - start)
        return best

    chosen, times = [], {}
    with torch.inference_mode():
        spikes = model.run(x[:1], record_spikes=True).spikes  # [1, T, N] per layer
        for layer in candidates:
            rows = spikes[layer - 1][0].contiguous()  # the layer's input, [T, N_in]
            synapse = model.synapses[layer]
            if event_linear(synapse, rows) is None:  # no compiled kernel here
                return
            dense = cpu_of(lambda s=synapse, r=rows: linear_rows(s, r))
            event = cpu_of(lambda s=synapse, r=rows: event_linear(s, r))
            times[layer] = {"dense_s": dense, "event_s": event}
            if event <= EVENT_SYNAPSE_GAIN * dense:
                chosen.append(layer)
    model.use_event_synapses(chosen)
    loaded.synapse_calibration = times


def prepare_for_serving(synapses: str, batching: str) -> Callable[[LoadedModel], None]:
    """The model cache's `on_load`: event-driven synapses chosen (`settings.predict_synapses`)
    before the batching calibration (`settings.predict_batching` "auto"), which then measures
    the forward as it will run."""

    def prepare(loaded: LoadedModel) -> None:
        calibrate_event_synapses(loaded, synapses)
        if batching == "auto":
            calibrate_batching(loaded)

    return prepare


class QueueFull(Exception):
    """The predict pool's queue is full."""


class InferencePool:
    """The forward passes of the predict route: `workers` threads, torch limited to
    `torch_threads` intra-op threads (process wide), at most `queue_size` requests waiting
    beyond the running ones (`submit` raises `QueueFull` past that, at once)."""

    def __init__(self, *, workers: int, torch_threads: int, queue_size: int) -> None:
        torch.set_num_threads(torch_threads)
        self.workers, self.torch_threads, self.queue_size = workers, torch_threads, queue_size
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="predict")
        self._slots = threading.BoundedSemaphore(workers + queue_size)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        if not self._slots.acquire(blocking=False):
            raise QueueFull(
                f"{self.workers} forward passes are running and {self.queue_size} waiting "
                "(settings.predict_workers, settings.predict_queue_size)"
            )
        try:
            future = self._executor.submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Batch:
    key: Any
    runner: Callable[[list[Any]], list[Any]]
    items: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    steps: int = 0
    ready: bool = False  # full, or its wait is over: it goes when a worker is free


class Batcher:
    """Dynamic batching on the event loop, work-conserving: at most `pool.workers` batches run
    at once; a request whose key (checkpoint, step count) has an open batch joins it, and a
    batch goes to the pool as soon as a worker is free, so a lone request waits for nothing
    and requests arriving while every worker is busy are gathered into the next forward. With
    `wait_s` > 0 a batch also waits that long after its first request (a bigger batch for a
    device where one costs little more than a small one). A batch holds at most `max_steps`
    sequences x steps (a full one is ready at once). At most `pool.queue_size` requests wait
    beyond the running batches; one more is refused with `QueueFull` at once, as a full pool
    queue refuses unbatched requests."""

    def __init__(self, pool: InferencePool, *, wait_s: float, max_steps: int) -> None:
        self.pool, self.wait_s, self.max_steps = pool, wait_s, max_steps
        self._open: dict[Any, _Batch] = {}  # the batch each key's requests join
        self._waiting: list[_Batch] = []  # not yet running, oldest first
        self._running = 0
        self.batches = 0
        self.batched_requests = 0

    def _queued(self) -> int:
        return sum(len(b.items) for b in self._waiting)

    async def run(
        self,
        key: Any,
        steps: int,
        item: Any,
        runner: Callable[[list[Any]], list[Any]],
        max_steps: int | None = None,
    ) -> Any:
        """`item`'s result from `runner` (run on the pool with the items of its batch); a
        batch of `key` holds at most `max_steps` (default: the batcher's) sequences x steps."""
        loop = asyncio.get_running_loop()
        limit = min(max_steps or self.max_steps, self.max_steps)
        if self._running >= self.pool.workers and self._queued() >= self.pool.queue_size:
            raise QueueFull(
                f"{self._running} batched forward passes are running and {self._queued()} "
                "requests waiting (settings.predict_workers, settings.predict_queue_size)"
            )
        batch = self._open.get(key)
        if batch is not None and batch.steps + steps > limit:
            self._close(batch)
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch(key, runner, ready=self.wait_s <= 0)
            self._waiting.append(batch)
            if not batch.ready:
                loop.call_later(self.wait_s, self._waited, batch)
        future = loop.create_future()
        batch.items.append((item, future))
        batch.steps += steps
        if batch.steps >= limit:
            self._close(batch)
        self._dispatch()
        return await future

    def _close(self, batch: _Batch) -> None:
        """No more requests join `batch`; it goes when a worker is free."""
        batch.ready = True
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _waited(self, batch: _Batch) -> None:
        batch.ready = True
        self._dispatch()

    def _dispatch(self) -> None:
        while self._running < self.pool.workers:
            batch = next((b for b in self._waiting if b.ready), None)
            if batch is None:
                return
            self._waiting.remove(batch)
            self._close(batch)
            self._start(batch)

    def _start(self, batch: _Batch) -> None:
        futures = [f for _, f in batch.items]
        self.batches += 1
        self.batched_requests += len(futures)
        try:
            done = self.pool.submit(batch.runner, [item for item, _ in batch.items])
        except QueueFull as exc:  # the pool is full of other work (unbatched, stream chunks)
            for f in futures:
                if not f.done():
                    f.set_exception(QueueFull(str(exc)))
            return
        self._running += 1
        loop = asyncio.get_running_loop()
        done.add_done_callback(lambda d: loop.call_soon_threadsafe(self._finished, d, futures))

    def _finished(self, done: Future, futures: list[asyncio.Future]) -> None:
        self._running -= 1
        self._deliver(done, futures)
        self._dispatch()

    @staticmethod
    def _deliver(done: Future, futures: list[asyncio.Future]) -> None:
        exc = done.exception()
        results = None if exc is not None else done.result()
        for i, f in enumerate(futures):
            if f.done():  # the request was cancelled (client gone)
                continue
            if exc is not None:
                f.set_exception(exc)
            else:
                f.set_result(results[i])


def _pick_layer(spikes: list[torch.Tensor] | torch.Tensor, layer: int) -> torch.Tensor:
    if isinstance(spikes, torch.Tensor):
        return spikes
    if len(spikes) == 1:
        return spikes[0]
    return spikes[layer]


# ----------------------------------------------------------------------------- streams
@dataclass
class Stream:
    id: str
    owner_id: str
    job_id: str
    loaded: LoadedModel
    max_steps: int | None
    created_at: float
    last_used: float
    steps: int = 0
    batch_size: int | None = None  # fixed by the first chunk
    state: Any = None
    outputs: list[np.ndarray] = field(default_factory=list)  # per-step kinds: chunks so far
    lock: threading.Lock = field(default_factory=threading.Lock)


class StreamLimit(Exception):
    """Too many open streams."""


class StreamStore:
    """In-memory streaming sessions: expire after `ttl_s` idle; at most `max_streams` open in
    all and `max_per_user` per user, so one user at the cap blocks no one else."""

    def __init__(self, *, ttl_s: float = 600.0, max_streams: int = 64, max_per_user: int = 8):
        self.ttl_s = ttl_s
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self._streams: dict[str, Stream] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._streams.values() if now - s.last_used > self.ttl_s]:
            del self._streams[sid]

    def open(
        self, *, owner_id: str, job_id: str, loaded: LoadedModel, max_steps: int | None
    ) -> Stream:
        now = time.monotonic()
        stream = Stream(
            id=uuid.uuid4().hex,
            owner_id=owner_id,
            job_id=job_id,
            loaded=loaded,
            max_steps=max_steps,
            created_at=now,
            last_used=now,
        )
        with self._lock:
            self._expire(now)
            own = sum(1 for s in self._streams.values() if s.owner_id == owner_id)
            if own >= self.max_per_user:
                raise StreamLimit(
                    f"you have {own} streams open, the limit per user is {self.max_per_user} "
                    "(settings.max_streams_per_user); DELETE finished streams or wait for idle "
                    f"ones to expire ({self.ttl_s:.0f} s)"
                )
            if len(self._streams) >= self.max_streams:
                raise StreamLimit(
                    f"{len(self._streams)} streams are open on this server, the limit is "
                    f"{self.max_streams} (settings.max_streams); "
                    "DELETE finished streams or wait for idle ones to expire "
                    f"({self.ttl_s:.0f} s)"
                )
            self._streams[stream.id] = stream
        return stream

    def get(self, stream_id: str, *, owner_id: str, job_id: str) -> Stream | None:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            stream = self._streams.get(stream_id)
            if stream is None or stream.owner_id != owner_id or stream.job_id != job_id:
                return None
            stream.last_used = now
            return stream

    def close(self, stream_id: str, *, owner_id: str, job_id: str) -> bool:
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None or stream.owner_id != owner_id or stream.job_id != job_id:
                return False
            del self._streams[stream_id]
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)


def feed_chunk(stream: Stream, x: np.ndarray, *, want_probs: bool = True) -> dict[str, Any]:
    """Feed `x` [N, t, F] to the stream (caller holds `stream.lock`); the prediction so far."""
    with torch.inference_mode():
        if stream.state is None:
            stream.batch_size = int(x.shape[0])
            stream.state = stream.loaded.model.initial_state(stream.batch_size)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        out, stream.state = stream.loaded.model.forward_chunk(xt, stream.state)
        output = out.float().numpy()
    stream.steps += int(x.shape[1])
    kind = stream.loaded.spec.kind
    if kind in ("sequence", "sequence_regression"):  # the chunk's steps: keep every step so far
        stream.outputs.append(output)
        output = np.concatenate(stream.outputs, axis=1)
    return {
        "kind": kind,
        "steps": stream.steps,
        "complete": stream.max_steps is not None and stream.steps >= stream.max_steps,
        "predictions": format_outputs(kind, output, want_probs),
    }


# ----------------------------------------------------------------------------- TE similarity
def te_tables(loaded: LoadedModel) -> list[tuple[str, np.ndarray]]:
    """The TE table each hidden layer reads, as (parameter name, [te_length, N_l]) arrays
    (`CelifNetwork.te_by_layer`); [] for a model without TE."""
    return [(name, t.detach().float().cpu().numpy()) for name, t in loaded.model.te_by_layer()]


def cosine_similarity_matrix(te: np.ndarray, max_size: int = 256) -> tuple[np.ndarray, int]:
    """Cosine similarity of the TE vectors of every pair of timesteps, [T', T'] with T' <= max_size
    (rows averaged over windows of `stride` steps when T is larger); returns (matrix, stride)."""
    steps = te.shape[0]
    stride = max(1, -(-steps // max_size))
    if stride > 1:
        pad = (-steps) % stride
        padded = np.concatenate([te, np.repeat(te[-1:], pad, axis=0)]) if pad else te
        te = padded.reshape(-1, stride, te.shape[1]).mean(axis=1)
    norm = np.linalg.norm(te, axis=1, keepdims=True)
    unit = te / np.maximum(norm, 1e-12)
    return unit @ unit.T, stride


def te_similarity(
    loaded: LoadedModel, *, layer: int = 0, max_size: int = 256
) -> dict[str, Any] | None:
    tables = te_tables(loaded)
    if not tables:
        return None
    name, table = tables[min(layer, len(tables) - 1)]
    table = table[: loaded.spec.seq_len]
    matrix, stride = cosine_similarity_matrix(table.astype(np.float64), max_size)
    return {
        "parameter": name,
        "layer": layer,
        "steps": int(table.shape[0]),
        "neurons": int(table.shape[1]),
        "stride": stride,
        "matrix": matrix,
    }


# ----------------------------------------------------------------------------- task samples
# Only the `n` rows asked for are built: never a job's whole evaluation set, and nothing is
# cached between requests (a large job's eval sets took hundreds of MB in the API before).


SAMPLES_INDEX = 1_000_000


class DataUnavailable(Exception):
    """The task's data cannot be read (e.g. MNIST files missing); the message says which setting."""


def task_samples(
    spec: JobSpec,
    *,
    split: str,
    n: int,
    mnist_dir: Path | None,
    datasets_dir: Path | None,
    offset: int = 0,
) -> tuple[np.ndarray, list[Any]]:
    """`n` sequences of the spec's task (`split` = val|test) and their targets, as numpy.

    MNIST and uploaded datasets: rows `offset .. offset+n` of the job's own split (the same rows
    its evaluation used). Generated tasks (adding, copy_memory): `n` sequences drawn from the
    task's seed, the split and `offset` (deterministic; drawing the eval set's own rows would
    mean generating all of it)."""
    from celif_core.errors import DataError

    try:
        name = spec.task.name
        if name in ("seq_mnist", "ps_mnist"):
            x, y = _mnist_rows(spec, split, n, offset, mnist_dir)
        elif name == "dataset":
            x, y = _dataset_rows(spec, split, n, offset, datasets_dir)
        else:
            x, y = _generated_rows(spec, split, n, offset)
    except DataError as exc:
        raise DataUnavailable(str(exc)) from None
    return np.asarray(x, dtype=np.float32), np.asarray(y).tolist()


def _generated_rows(spec: JobSpec, split: str, n: int, offset: int):
    from celif_core.tasks import AddingTask, CopyMemoryTask, derived_generator

    p = spec.task.params
    if spec.task.name == "adding":
        task = AddingTask(p.seq_len, 0, 0, p.seed)  # no eval sets: only the generator
    else:
        task = CopyMemoryTask(p.delay, 0, 0, p.seed)
    # The split's own stream at an index its eval set (index 0) never uses.
    x, y = task.generate(n, derived_generator(p.seed, split, SAMPLES_INDEX + offset))
    return x.numpy(), y.numpy()


def _mnist_rows(spec: JobSpec, split: str, n: int, offset: int, mnist_dir: Path | None):
    from celif_core.tasks import derived_generator, load_mnist

    p = spec.task.params
    data = load_mnist(mnist_dir, download=False)  # read for this request, then dropped
    if split == "test":
        images, labels = data["test_images"], data["test_labels"]
        idx = np.arange(offset, min(offset + n, images.shape[0]))
    else:  # the validation split carved from the training images, as celif_core's MnistTask
        order = torch.randperm(60000, generator=derived_generator(p.seed, "split")).numpy()
        idx = order[: p.val_size][offset : offset + n]
        images, labels = data["train_images"], data["train_labels"]
    x = images[idx].astype(np.float32) / 255.0
    if spec.task.name == "ps_mnist":
        gen = torch.Generator().manual_seed(int(p.permutation_seed))
        x = x[:, torch.randperm(784, generator=gen).numpy()]
    return x[:, :, None], labels[idx]


def _dataset_rows(spec: JobSpec, split: str, n: int, offset: int, datasets_dir: Path | None):
    """Rows of the job's split read straight from the stored NPZ (headers, then the rows'
    bytes), as celif_core's DatasetTask splits it; never the whole file."""
    import zipfile

    from celif_core.errors import DataError
    from celif_core.tasks import dataset_path, derived_generator
    from service.datasets.validate import InvalidDataset, array_member, read_rows

    p = spec.task.params
    if datasets_dir is None:
        raise DataError("no datasets directory is configured (settings.datasets_dir)")
    path = dataset_path(datasets_dir, p.dataset_id)
    if not path.is_file():
        raise DataError(f"no dataset with id {p.dataset_id!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            count = array_member(zf, "x").shape[0]
            order = torch.randperm(count, generator=derived_generator(p.seed, "split"))
            n_test = max(1, round(count * p.test_fraction))
            n_val = max(1, round(count * p.val_fraction))
            part = order[:n_test] if split == "test" else order[n_test : n_test + n_val]
            idx = part[offset : offset + n].tolist()
            x_rows, y_rows = read_rows(zf, "x", idx), read_rows(zf, "y", idx)
    except (InvalidDataset, zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"dataset {p.dataset_id!r} cannot be read: {exc}") from None
    if spec.kind in ("classification", "sequence"):
        y_rows = y_rows.astype(np.int64)
    return x_rows, y_rows
