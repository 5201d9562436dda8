"""Predict, streaming predict, TE similarity and task samples: the rules.

Input checks (shape against the job's task, finiteness, the sequence limit) happen here with
numpy, so every refusal is a 422 naming the expected shape. The torch work is in
`service.inference`, imported lazily so that importing the app stays light.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from celif_core.spec import NO_LIMITS, JobSpec, SpecError, validate_spec
from jobstore.artifacts import dataset_key
from jobstore.datasets import job_dataset_error
from jobstore.db.models import Checkpoint, Dataset, Job, User
from jobstore.settings import Settings
from service.errors import NotFound, ServiceError, ServiceUnavailable, Unprocessable
from service.jobs.service import fetch_artifact, get_owned_job, resolve_checkpoint
from service.ttlcache import TTLCache

# Tasks whose networks were trained on one sequence length; others (adding) generalise to any T
# up to the TE table (CE-LIF) or MAX_FREE_STEPS.
FIXED_LENGTH_TASKS = ("seq_mnist", "ps_mnist", "copy_memory", "dataset")
MAX_FREE_STEPS = 100_000
STREAM_TTL_S = 600.0
MAX_SAMPLES = 64


class TooManyStreams(ServiceError):
    status_code = 429
    default_message = "too many open streams"


NPY = "application/x-npy"


@dataclass
class Runtime:
    """Per-app inference state: the model cache, the open streams, the predict pool and the
    predict lookups (job spec, checkpoint row) cached `settings.predict_lookup_ttl_s`."""

    cache: Any
    streams: Any
    pool: Any = None
    lookups: TTLCache | None = None
    retry_after_s: int = 1
    batcher: Any = None  # inference.Batcher unless predict_batching is "off"
    batching: str = "off"  # settings.predict_batching
    fast_path_served: int = 0  # predict requests answered by service.predict.fastpath


_RUNTIME_LOCK = threading.Lock()


def batching_enabled(settings: Settings) -> bool:
    """ "on", or "auto": per model, where it measured cheaper (`inference.calibrate_batching`,
    once at the model's load; the API loads models on the CPU, where that is model-dependent)."""
    return settings.predict_batching != "off"


def get_runtime(state: Any, settings: Settings) -> Runtime:
    """The app's runtime (kept on `app.state`), created at first use."""
    runtime = getattr(state, "inference_runtime", None)
    if runtime is None:
        with _RUNTIME_LOCK:
            runtime = getattr(state, "inference_runtime", None)
            if runtime is None:
                from service import inference

                workers, threads = settings.predict_parallelism
                runtime = Runtime(
                    cache=inference.ModelCache(
                        settings.model_cache_size,
                        on_load=inference.prepare_for_serving(
                            settings.predict_synapses, settings.predict_batching
                        ),
                    ),
                    streams=inference.StreamStore(
                        ttl_s=STREAM_TTL_S,
                        max_streams=settings.max_streams,
                        max_per_user=settings.max_streams_per_user,
                    ),
                    pool=inference.InferencePool(
                        workers=workers,
                        torch_threads=threads,
                        queue_size=settings.predict_queue_size,
                    ),
                    lookups=TTLCache(settings.predict_lookup_ttl_s),
                    retry_after_s=settings.predict_retry_after_s,
                    batching=settings.predict_batching,
                )
                if batching_enabled(settings):
                    runtime.batcher = inference.Batcher(
                        runtime.pool,
                        wait_s=settings.predict_batch_wait_ms / 1000,
                        max_steps=settings.predict_max_batch_steps,
                    )
                state.inference_runtime = runtime
    return runtime


# ----------------------------------------------------------------------------- input checks
def step_limit(spec: JobSpec) -> tuple[int | None, int]:
    """(exact T or None, max T) accepted for the job's task."""
    if spec.task.name in FIXED_LENGTH_TASKS:
        return spec.seq_len, spec.seq_len
    return None, spec.te_length if spec.uses_te else MAX_FREE_STEPS


def expected_shape(spec: JobSpec, limit: int | None, *, chunk: bool = False) -> str:
    exact, max_t = step_limit(spec)
    f = spec.input_size
    t = "t" if chunk else (f"T={exact}" if exact is not None else "T")
    text = f"[N, {t}, F={f}]"
    if f == 1:
        text += f" (or [N, {t}] since F=1)"
    notes = []
    if limit is not None:
        notes.append(f"1 <= N <= {limit} (settings.max_predict_sequences)")
    if chunk:
        notes.append(f"chunks adding up to at most {max_t} steps")
    elif exact is None:
        notes.append(f"1 <= T <= {max_t}")
    return text + (", " + ", ".join(notes) if notes else "")


def _refuse(message: str, loc: tuple = ("body", "inputs")) -> Unprocessable:
    return Unprocessable(message, loc=loc)


def parse_inputs(
    raw: Any, spec: JobSpec, *, max_sequences: int | None, chunk: bool = False
) -> np.ndarray:
    """The request's inputs as float32 [N, T, F], or a 422 naming the expected shape."""
    want = expected_shape(spec, max_sequences, chunk=chunk)
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError):
        raise _refuse(
            f"inputs must be a rectangular array of numbers of shape {want}; the nested lists "
            "have different lengths"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise _refuse(
            f"inputs must be numbers, shape {want}; got values of type {arr.dtype.name!r} "
            "(strings, null or ragged nested lists)"
        )
    got = list(arr.shape)  # not np.shape(raw): that would convert the nested lists again
    f = spec.input_size
    if arr.ndim == 2 and f == 1:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != f or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise _refuse(f"inputs must have shape {want}; got {got}")
    n, t = int(arr.shape[0]), int(arr.shape[1])
    if max_sequences is not None and n > max_sequences:
        raise _refuse(
            f"too many sequences: N={n} is over the limit of {max_sequences} "
            f"(settings.max_predict_sequences); expected shape {want}"
        )
    exact, max_t = step_limit(spec)
    if not chunk:
        if exact is not None and t != exact:
            raise _refuse(
                f"inputs have T={t} steps but the job's task {spec.task.name!r} has T={exact}; "
                f"expected shape {want}; got {list(arr.shape)}"
            )
        if t > max_t:
            raise _refuse(f"inputs have T={t} steps, over {max_t}; expected shape {want}")
    with np.errstate(over="ignore", invalid="ignore"):
        x = arr.astype(np.float32)  # beyond float32 becomes inf, refused below
    if not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise _refuse(
            f"inputs hold {bad} NaN or infinite values (or values beyond float32); every value "
            f"must be finite; expected shape {want}"
        )
    return x


def load_npy(raw: bytes, *, max_values: int) -> np.ndarray:
    """An `application/x-npy` body as an array, numpy only and never a pickle: the header is
    read first (version 1.0/2.0, a numeric dtype, at most `max_values` values, the data's
    length), then `np.load(allow_pickle=False)`. Anything else is a 422."""
    from numpy.lib import format as npy_format

    buf = io.BytesIO(raw)
    try:
        version = npy_format.read_magic(buf)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"NPY format version {version} is not accepted (1.0 or 2.0)")
    except ValueError as exc:
        raise _refuse(f"the body is not a valid NPY array: {exc}") from None
    if dtype.kind not in "iuf" or dtype.hasobject:
        raise _refuse(f"NPY inputs must be integers or floats; got dtype {dtype.str!r}")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count >= max_values:
        raise _refuse(
            f"the body holds more than {max_values} values (settings.max_predict_values); "
            "send fewer sequences per request"
        )
    if len(raw) - buf.tell() != count * dtype.itemsize:
        raise _refuse(
            f"the NPY body's data is {len(raw) - buf.tell()} bytes; its header {list(shape)} "
            f"{dtype.str} needs {count * dtype.itemsize}"
        )
    buf.seek(0)
    try:
        return np.load(buf, allow_pickle=False)
    except ValueError as exc:
        raise _refuse(f"the body is not a valid NPY array: {exc}") from None


def _spec_of(session: Session, job: Job) -> JobSpec:
    """The job's stored spec, if its owner may still read the data it names (another user's
    dataset is a 404 exactly like a missing one)."""
    refused = job_dataset_error(session, job)
    if refused is not None:
        raise NotFound(refused)
    # The stored spec was validated at submission (with that day's limits); only re-read it.
    return validate_spec(job.spec, limits=NO_LIMITS)


def _checkpoint_ref(ckpt: Checkpoint | CheckpointInfo) -> dict[str, Any]:
    return {"id": ckpt.id, "step": ckpt.step, "sha256": ckpt.sha256}


def _load(runtime: Runtime, ckpt: Checkpoint | CheckpointInfo, path: Path) -> tuple[Any, bool]:
    cached = ckpt.sha256 in runtime.cache
    return runtime.cache.get(ckpt.sha256, path), cached


def _resolve(
    session: Session, user: User, job_id: str, ref: str, settings: Settings
) -> tuple[Job, JobSpec, Checkpoint, Path]:
    """The user's job, its spec, and the checkpoint ``ref`` names (row and file)."""
    job = get_owned_job(session, user, job_id)
    ckpt, path = resolve_checkpoint(session, job, ref, settings=settings)
    return job, _spec_of(session, job), ckpt, path


# ----------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class CheckpointInfo:
    """What a predict answer needs of a checkpoint row (cached across requests)."""

    id: str
    step: int
    sha256: str


@dataclass(frozen=True)
class PredictTarget:
    """What a predict request read from the database: the job's spec, the checkpoint and its
    file. The forward pass that follows needs no database (the route ends the unit of work
    in between, so a long forward pass holds no pooled connection)."""

    job_id: str
    spec: JobSpec
    checkpoint: CheckpointInfo
    path: Path
    inputs: Any  # parsed, validated [N, T, input_size] array
    lookup_key: tuple | None = None


def _check_request(spec: JobSpec, inputs: Any, returns: list[str], spikes_layer: int, settings: Settings) -> np.ndarray:  # fmt: skip
    x = parse_inputs(inputs, spec, max_sequences=settings.max_predict_sequences)
    layers = 0 if spec.model.neuron == "lstm" else len(spec.model.hidden)
    if "spikes" in returns and spikes_layer >= max(layers, 1):
        raise Unprocessable(
            f"spikes_layer={spikes_layer} but the model has {layers} spiking layer(s) "
            f"(0..{max(layers - 1, 0)})",
            loc=("body", "spikes_layer"),
        )
    return x


def cached_target(
    lookups: TTLCache | None,
    user_id: str,
    job_id: str,
    *,
    inputs: Any,
    checkpoint: str,
    returns: list[str],
    spikes_layer: int,
    settings: Settings,
) -> PredictTarget | None:
    """The target from `lookups` alone (no database), or None when something must be read."""
    if lookups is None:
        return None
    spec = lookups.get(("spec", user_id, job_id))
    ckpt_key = ("checkpoint", user_id, job_id, checkpoint)
    found = lookups.get(ckpt_key)
    if spec is None or found is None:
        return None
    x = _check_request(spec, inputs, returns, spikes_layer, settings)
    return PredictTarget(job_id, spec, found[0], found[1], x, ckpt_key)


def predict_target(
    session: Session,
    user: User,
    job_id: str,
    *,
    inputs: Any,
    checkpoint: str,
    returns: list[str],
    spikes_layer: int,
    settings: Settings,
    lookups: TTLCache | None = None,
) -> PredictTarget:
    """The request's target. With `lookups`, the job's spec (per user and job) and the
    checkpoint `checkpoint` names (per user, job and ref) are reused for the cache's TTL: a
    new best checkpoint, or a job's owner losing it, takes effect within that bound."""
    lookups = lookups if lookups is not None else TTLCache(0)
    spec_key = ("spec", user.id, job_id)
    job = None
    spec = lookups.get(spec_key)
    if spec is None:
        job = get_owned_job(session, user, job_id)
        spec = _spec_of(session, job)
        lookups.put(spec_key, spec)
    # Validate before touching the checkpoint: a bad payload is a 422 even on a job without one.
    x = _check_request(spec, inputs, returns, spikes_layer, settings)
    ckpt_key = ("checkpoint", user.id, job_id, checkpoint)
    found = lookups.get(ckpt_key)
    if found is None:
        job = job or get_owned_job(session, user, job_id)
        ckpt, path = resolve_checkpoint(session, job, checkpoint, settings=settings)
        found = (CheckpointInfo(ckpt.id, ckpt.step, ckpt.sha256), path)
        lookups.put(ckpt_key, found)
    return PredictTarget(job_id, spec, found[0], found[1], x, ckpt_key)


def predict(
    target: PredictTarget,
    *,
    returns: list[str],
    spikes_layer: int,
    runtime: Runtime,
    started: float,
    as_array: bool = False,
) -> dict[str, Any]:
    from service import inference

    try:
        loaded, cached = _load(runtime, target.checkpoint, target.path)
    except FileNotFoundError:
        # The cached lookup named a file that retention has since deleted: look again.
        raise _replaced(runtime, target) from None
    body = inference.predict(
        loaded,
        target.inputs,
        returns=frozenset(returns),
        spikes_layer=spikes_layer,
        as_array=as_array,
    )
    return {
        "job_id": target.job_id,
        "checkpoint": _checkpoint_ref(target.checkpoint),
        **body,
        "cached": cached,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def batches(runtime: Runtime, target: PredictTarget) -> bool:
    """Whether the request joins the batcher: a batchable network, and batching "on", or
    "auto" with the model loaded and measured to gain. (Its first request, which loads it, runs
    alone.)"""
    if runtime.batcher is None or not batchable(target.spec):
        return False
    if runtime.batching == "on":
        return True
    loaded = runtime.cache.peek(target.checkpoint.sha256)
    return loaded is not None and bool(loaded.batching)


def batchable(spec: JobSpec) -> bool:
    """Feedforward spiking networks only: each of their matmuls has T x B rows, so a row's
    result does not depend on the batch (celif_core.models.linear_rows); recurrent layers and
    the LSTM multiply B rows per step, where BLAS rounding does depend on B."""
    return spec.model.neuron != "lstm" and spec.model.architecture == "feedforward"


def predict_batch(items: list[tuple[PredictTarget, dict[str, Any]]], runtime: Runtime) -> list:
    """Requests gathered by the batcher (same checkpoint, same T): one forward, one answer
    (the same as `predict` would give) per request."""
    from service import inference

    target0 = items[0][0]
    try:
        loaded, cached = _load(runtime, target0.checkpoint, target0.path)
    except FileNotFoundError:
        return [_replaced(runtime, target0) for _ in items]
    options = [
        inference.PredictOptions(frozenset(kw["returns"]), kw["spikes_layer"], kw["as_array"])
        for _, kw in items
    ]
    bodies = inference.predict_many(loaded, [t.inputs for t, _ in items], options)
    return [
        {
            "job_id": target.job_id,
            "checkpoint": _checkpoint_ref(target.checkpoint),
            **body,
            "cached": cached,
            "elapsed_ms": round((time.perf_counter() - kw["started"]) * 1000, 3),
        }
        for (target, kw), body in zip(items, bodies, strict=True)
    ]


def _replaced(runtime: Runtime, target: PredictTarget) -> ServiceUnavailable:
    if runtime.lookups is not None and target.lookup_key is not None:
        runtime.lookups.discard(target.lookup_key)
    return ServiceUnavailable(
        "the checkpoint was replaced while this request ran; retry",
        headers={"Retry-After": str(runtime.retry_after_s)},
    )


def _queue_full(exc: Exception, runtime: Runtime) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the predict queue is full: {exc}; retry later",
        headers={"Retry-After": str(runtime.retry_after_s)},
    )


def on_pool(pool_of: Runtime, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a forward (a stream's chunk) on the predict pool from a request thread and wait for
    it: the same torch thread budget and bounded queue as /predict."""
    from service import inference

    try:
        future = pool_of.pool.submit(fn, *args, **kwargs)
    except inference.QueueFull as exc:
        raise _queue_full(exc, pool_of) from None
    return future.result()


async def run_predict(target: PredictTarget, *, runtime: Runtime, **kwargs: Any) -> dict:
    """`predict` on the runtime's pool (off the event loop), or gathered with concurrent
    requests of the same checkpoint and step count by the batcher; a full queue is a 503 with
    `Retry-After` at once, instead of an unbounded wait."""
    from service import inference

    try:
        if not batches(runtime, target):
            result = await runtime.pool.run(predict, target, runtime=runtime, **kwargs)
        else:
            x = target.inputs
            key = (target.checkpoint.sha256, x.shape[1], x.shape[2])
            loaded = runtime.cache.peek(target.checkpoint.sha256)
            most = loaded.max_batch if loaded is not None and loaded.max_batch else None
            result = await runtime.batcher.run(
                key,
                x.shape[0] * x.shape[1],
                (target, kwargs),
                lambda items: predict_batch(items, runtime),
                max_steps=most * x.shape[1] if runtime.batching == "auto" and most else None,
            )
    except inference.QueueFull as exc:
        raise _queue_full(exc, runtime) from None
    if isinstance(result, ServiceError):
        raise result
    return result


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- streams
def open_stream(
    session: Session,
    user: User,
    job_id: str,
    *,
    checkpoint: str,
    settings: Settings,
    runtime: Runtime,
) -> dict[str, Any]:
    from service import inference

    job, spec, ckpt, path = _resolve(session, user, job_id, checkpoint, settings)
    loaded, _ = _load(runtime, ckpt, path)
    exact, max_t = step_limit(spec)
    try:
        stream = runtime.streams.open(
            owner_id=user.id, job_id=job.id, loaded=loaded, max_steps=exact
        )
    except inference.StreamLimit as exc:
        raise TooManyStreams(str(exc)) from None
    return {
        "stream_id": stream.id,
        "job_id": job.id,
        "checkpoint": _checkpoint_ref(ckpt),
        "expected_shape": expected_shape(spec, settings.max_predict_sequences, chunk=True),
        "max_steps": max_t,
        "ttl_s": runtime.streams.ttl_s,
    }


def _get_stream(runtime: Runtime, user: User, job_id: str, stream_id: str) -> Any:
    stream = runtime.streams.get(stream_id, owner_id=user.id, job_id=job_id)
    if stream is None:
        raise NotFound(f"no open stream {stream_id!r} on job {job_id!r} (expired or deleted?)")
    return stream


def feed_chunk(
    user: User,
    job_id: str,
    stream_id: str,
    *,
    inputs: Any,
    settings: Settings,
    runtime: Runtime,
) -> dict[str, Any]:
    """One chunk into an open stream (the route has checked the job is the user's; a stream
    holds its model, so no database is read here)."""
    from service import inference

    stream = _get_stream(runtime, user, job_id, stream_id)
    spec = stream.loaded.spec
    x = parse_inputs(inputs, spec, max_sequences=settings.max_predict_sequences, chunk=True)
    _, max_t = step_limit(spec)
    with stream.lock:
        if stream.batch_size is not None and x.shape[0] != stream.batch_size:
            raise _refuse(
                f"this stream carries N={stream.batch_size} sequences (fixed by its first chunk); "
                f"got a chunk of N={x.shape[0]}"
            )
        if stream.steps + x.shape[1] > max_t:
            raise _refuse(
                f"the stream has seen {stream.steps} steps; {x.shape[1]} more would exceed the "
                f"task's {max_t} steps"
            )
        body = inference.feed_chunk(stream, x)
    return {"stream_id": stream.id, **body}


def close_stream(
    session: Session, user: User, job_id: str, stream_id: str, runtime: Runtime
) -> None:
    get_owned_job(session, user, job_id)
    if not runtime.streams.close(stream_id, owner_id=user.id, job_id=job_id):
        raise NotFound(f"no open stream {stream_id!r} on job {job_id!r}")


# ----------------------------------------------------------------------------- TE similarity
def te_similarity(
    session: Session,
    user: User,
    job_id: str,
    *,
    checkpoint: str,
    layer: int,
    settings: Settings,
    runtime: Runtime,
) -> dict[str, Any]:
    from service import inference

    job, spec, ckpt, path = _resolve(session, user, job_id, checkpoint, settings)
    if not spec.uses_te:
        raise NotFound(
            f"job {job_id} has no TE table (neuron={spec.model.neuron!r}"
            + (
                f", ce_mode={spec.model.neuron_params.ce_mode!r}"
                if spec.model.neuron == "celif"
                else ""
            )
            + "); the TE similarity exists for CE-LIF jobs whose ce_mode uses TE"
        )
    if layer >= len(spec.model.hidden):
        raise Unprocessable(
            f"layer={layer} but the model has {len(spec.model.hidden)} hidden layers",
            loc=("query", "layer"),
        )
    loaded, _ = _load(runtime, ckpt, path)
    result = inference.te_similarity(loaded, layer=layer)
    if result is None:
        raise NotFound(f"the checkpoint of job {job_id} holds no TE table")
    return {"job_id": job_id, "checkpoint": _checkpoint_ref(ckpt), **result}


def te_similarity_png(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matrix = np.asarray(result["matrix"])
    extent = (0, result["steps"], result["steps"], 0)
    fig = Figure(figsize=(5.2, 4.4), dpi=110)
    ax = fig.add_subplot()
    image = ax.imshow(
        matrix, cmap="RdBu_r", vmin=-1, vmax=1, extent=extent, interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_xlabel("timestep")
    ax.set_ylabel("timestep")
    ax.set_title(
        f"TE cosine similarity, layer {result['layer']} (step {result['checkpoint']['step']})"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- samples
def samples_for_spec(
    spec: JobSpec,
    *,
    split: str,
    n: int,
    offset: int,
    settings: Settings,
    datasets_dir: Path | None = None,
) -> dict[str, Any]:
    from service import inference

    # A job stored before the resource limits (or under larger ones) may have sets no API
    # process should generate: refuse by the same rule as a submission.
    try:
        validate_spec(spec.to_dict(), limits=settings.spec_limits)
    except SpecError as exc:
        raise Unprocessable.from_errors(
            [{**e, "loc": ["spec", *e["loc"]]} for e in exc.errors]
        ) from None
    try:
        x, targets = inference.task_samples(
            spec,
            split=split,
            n=n,
            offset=offset,
            mnist_dir=settings.mnist_dir,
            datasets_dir=datasets_dir or settings.datasets_dir,
        )
    except inference.DataUnavailable as exc:
        raise NotFound(str(exc)) from None
    if x.shape[-1] == 1:
        inputs = x[:, :, 0].round(4).tolist()
    else:
        inputs = x.round(4).tolist()
    return {
        "task": spec.task.name,
        "split": split,
        "kind": spec.kind,
        "inputs": inputs,
        "targets": targets,
        "shape": list(x.shape),
    }


def job_samples(
    session: Session,
    user: User,
    job_id: str,
    *,
    split: str,
    n: int,
    offset: int,
    settings: Settings,
) -> dict[str, Any]:
    spec = _spec_of(session, get_owned_job(session, user, job_id))
    datasets_dir = None
    if spec.task.name == "dataset":  # (its owner owns it: _spec_of checked)
        row = session.get(Dataset, spec.task.params.dataset_id)
        what = f"dataset {row.id}"
        datasets_dir = fetch_artifact(settings, dataset_key(row.path), row.sha256, what).parent
    return samples_for_spec(
        spec, split=split, n=n, offset=offset, settings=settings, datasets_dir=datasets_dir
    )


def task_samples(
    task_name: str, *, split: str, n: int, offset: int, settings: Settings
) -> dict[str, Any]:
    if task_name == "dataset":
        raise Unprocessable(
            "samples of an uploaded dataset are read through a job: GET /api/v1/jobs/{id}/samples",
            loc=("path", "name"),
        )
    try:
        spec = validate_spec({"task": {"name": task_name}})
    except ValueError:
        raise NotFound(f"no task named {task_name!r}") from None
    return samples_for_spec(spec, split=split, n=n, offset=offset, settings=settings)
