"""The job spec: what a user submits, validated and with every default filled in.

This module imports no torch, so the API can validate specs and serve the catalogs without
loading the training stack. `validate_spec` is the one entry point; it raises `SpecError`
(a `ValueError`) whose errors name the field as a dotted path, e.g. `task.params.seq_len`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from celif_core.catalog import (
    ARCHITECTURES,
    BACKENDS,
    CE_MODES,
    CE_TIMINGS,
    DEVICES,
    LR_SCHEDULES,
    MEMORY_ALIASES,
    MEMORY_MODES,
    MNIST_TASKS,
    NEURON_NAMES,
    OPTIMIZERS,
    SYNTHETIC_TASKS,
    TASK_NAMES,
    TE_CE_MODES,
)
from celif_core.config import NetworkConfig

# Literal[tuple] is Literal[*tuple]: the names come from the catalog.
TaskName = Literal[TASK_NAMES]
NeuronName = Literal[NEURON_NAMES]
Architecture = Literal[ARCHITECTURES]
CeMode = Literal[CE_MODES]
CeTiming = Literal[CE_TIMINGS]

# Above this estimated activation memory a spec is refused (the batch cannot fit); the service
# passes its own limits from settings (`SpecLimits`).
DEFAULT_MAX_ACTIVATION_BYTES = 32 * 1024**3
DEFAULT_MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights, ~16 GB with grads and Adam
DEFAULT_MAX_EVAL_SET_BYTES = 8 * 1024**3  # a generated validation or test set held in memory
MNIST_SEQ_LEN = 784
MNIST_TRAIN_IMAGES = 60000
DEFAULT_MAX_STEPS = 5000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- task params
class MnistParams(_Strict):
    val_size: int = Field(5000, ge=100, le=30000, description="validation images carved from train")
    train_subset: int | None = Field(
        None, ge=1, le=60000, description="train on only this many images (None = all)"
    )
    seed: int = Field(0, ge=0, description="seed of the validation split and subset")


class PsMnistParams(MnistParams):
    permutation_seed: int = Field(0, ge=0, description="seed of the fixed pixel permutation")


class AddingParams(_Strict):
    seq_len: int = Field(100, ge=2, le=100_000, description="sequence length T")
    val_size: int = Field(1000, ge=10, le=100_000)
    test_size: int = Field(1000, ge=10, le=100_000)
    seed: int = Field(0, ge=0, description="seed of the fixed validation/test sets")


class CopyMemoryParams(_Strict):
    delay: int = Field(50, ge=1, le=100_000, description="blank steps between keys and markers")
    val_size: int = Field(1000, ge=10, le=100_000)
    test_size: int = Field(1000, ge=10, le=100_000)
    seed: int = Field(0, ge=0)


class DatasetParams(_Strict):
    dataset_id: str = Field(..., min_length=1, max_length=64, description="id of an uploaded NPZ")
    kind: Literal["auto", "classification", "regression"] = "auto"
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = Field(0, ge=0)
    # Filled from the stored dataset at validation, so a spec (and a checkpoint) is self-contained.
    seq_len: int | None = Field(None, ge=1)
    input_size: int | None = Field(None, ge=1)
    output_size: int | None = Field(None, ge=1)
    target: Literal["per_sequence", "per_step"] | None = None


def _dataset_kind(p: DatasetParams) -> str:
    """Per-sequence targets keep their kind; per-step ones are sequence outputs."""
    if p.target != "per_step":
        return p.kind
    return "sequence" if p.kind == "classification" else "sequence_regression"


@dataclass(frozen=True)
class TaskInfo:
    name: str
    description: str
    params: type[_Strict]
    kind: Callable[[Any], str]  # "classification" | "regression" | "sequence"
    seq_len: Callable[[Any], int]
    input_size: Callable[[Any], int]
    output_size: Callable[[Any], int]


TASKS: dict[str, TaskInfo] = {
    "seq_mnist": TaskInfo(
        "seq_mnist",
        "Sequential MNIST: one pixel per step in raster order (T=784), 10 classes.",
        MnistParams,
        lambda p: "classification",
        lambda p: MNIST_SEQ_LEN,
        lambda p: 1,
        lambda p: 10,
    ),
    "ps_mnist": TaskInfo(
        "ps_mnist",
        "Permuted sequential MNIST: pixels in a fixed random order (T=784), 10 classes.",
        PsMnistParams,
        lambda p: "classification",
        lambda p: MNIST_SEQ_LEN,
        lambda p: 1,
        lambda p: 10,
    ),
    "adding": TaskInfo(
        "adding",
        "Adding problem: (value, marker) per step; regress the sum of the two marked values.",
        AddingParams,
        lambda p: "regression",
        lambda p: p.seq_len,
        lambda p: 2,
        lambda p: 1,
    ),
    "copy_memory": TaskInfo(
        "copy_memory",
        "Copy memory: recall 10 symbols after `delay` blank steps (T=delay+20).",
        CopyMemoryParams,
        lambda p: "sequence",
        lambda p: p.delay + 20,
        lambda p: 10,
        lambda p: 10,
    ),
    "dataset": TaskInfo(
        "dataset",
        "An uploaded NPZ dataset (x [N,T,F], y [N] or [N,T]); classification or regression.",
        DatasetParams,
        _dataset_kind,
        lambda p: p.seq_len,
        lambda p: p.input_size,
        lambda p: p.output_size,
    ),
}


def train_split_size(task: TaskSpec) -> int | None:
    """Examples in the task's training split, known from the spec alone; None for the synthetic
    tasks (a fresh batch every step, no finite split) and for uploaded datasets (their size is
    not part of the spec)."""
    if task.name not in MNIST_TASKS:
        return None
    p = task.params
    n = MNIST_TRAIN_IMAGES - p.val_size
    return n if p.train_subset is None else min(n, p.train_subset)


# ----------------------------------------------------------------------------- neuron params
class _SpikingParams(_Strict):
    alpha: float = Field(0.5, gt=0, le=1, description="membrane decay")
    theta0: float = Field(0.3, gt=0, description="base firing threshold")
    surrogate_width: float = Field(1.0, gt=0, le=10, description="boxcar surrogate width a")
    detach_reset: bool = Field(False, description="stop gradients through the hard reset")


class LifParams(_SpikingParams):
    pass


class AlifParams(_SpikingParams):
    rho: float = Field(0.99, ge=0, lt=1, description="threshold-trace decay")
    beta: float = Field(1.8, ge=0, description="threshold adaptation strength")


class PlifParams(_SpikingParams):
    alpha: float = Field(0.5, gt=0, lt=1, description="initial (learnable) membrane decay")


class CelifParams(_SpikingParams):
    rho: float = Field(0.99, ge=0, lt=1, description="decay of the contextual threshold memory")
    ce_mode: CeMode = Field("membrane_te", description="contextual embedding variant (ablation)")
    ce_timing: CeTiming = Field(
        "current",
        description="membrane driving the threshold memory in the membrane ce_modes: this "
        "step's U[t] ('current') or the previous step's pre-reset U[t-1] ('previous', "
        "neuroseqbench's reading)",
    )
    te_init_mean: float = Field(0.0, ge=-10, le=10, description="mean of the N(m, s^2) TE init")
    te_init_std: float = Field(0.1, ge=0, le=10, description="std of the N(m, s^2) TE init")


class LstmParams(_Strict):
    pass


@dataclass(frozen=True)
class NeuronInfo:
    name: str
    description: str
    params: type[_Strict]


NEURONS: dict[str, NeuronInfo] = {
    "lif": NeuronInfo("lif", "Leaky integrate-and-fire, hard reset (paper Eq. 2).", LifParams),
    "alif": NeuronInfo(
        "alif", "Adaptive LIF: spike-driven threshold (paper Eq. 3, Bellec/Yin).", AlifParams
    ),
    "plif": NeuronInfo("plif", "Parametric LIF: learnable decay (Fang et al. 2021).", PlifParams),
    "celif": NeuronInfo(
        "celif",
        "CE-LIF: threshold driven by the contextual embedding U*TE (paper Eq. 4).",
        CelifParams,
    ),
    "lstm": NeuronInfo("lstm", "LSTM of matching size (ANN baseline).", LstmParams),
}

assert tuple(TASKS) == TASK_NAMES and tuple(NEURONS) == NEURON_NAMES  # one entry per name


# ----------------------------------------------------------------------------- spec sections
class TaskSpec(_Strict):
    name: TaskName
    params: SerializeAsAny[_Strict]

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.name]


class ModelSpec(_Strict):
    neuron: NeuronName = "celif"
    architecture: Architecture = "feedforward"
    hidden: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1, max_length=8)
    neuron_params: SerializeAsAny[_Strict]
    te_shared: bool = Field(True, description="one TE table for all layers (the paper's count)")
    te_length: int | None = Field(None, ge=1, description="rows of the TE table (default: T)")


class TrainingSpec(_Strict):
    # The budget: exactly one of max_steps / max_epochs. Neither given means max_steps=5000.
    max_steps: int | None = Field(
        DEFAULT_MAX_STEPS, ge=1, le=10_000_000, description="budget in optimizer steps"
    )
    max_epochs: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="budget in passes over the training split (instead of max_steps; "
        "tasks with a finite split only: seq_mnist, ps_mnist)",
    )
    batch_size: int = Field(256, ge=1, le=8192)
    eval_batch_size: int = Field(512, ge=1, le=8192)
    lr: float = Field(5e-4, gt=0, le=10)
    optimizer: Literal[OPTIMIZERS] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal[LR_SCHEDULES] = Field(
        "constant",
        description="cosine: to 0 over the budget; step: times lr_gamma every lr_step_epochs",
    )
    lr_step_epochs: int = Field(10, ge=1, le=10_000, description="step schedule: epochs per step")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: factor per step")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm (None = off)")
    seed: int = Field(0, ge=0)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    device: Literal[DEVICES] = "auto"
    backend: Literal[BACKENDS] = Field(
        "auto", description="neuron scan implementation (reference is for debugging)"
    )
    memory: Literal[MEMORY_MODES] = Field(
        "store",
        description="store each layer's activations for backward, or keep only its input and "
        "recompute them in backward (less memory, one more forward); 'auto' is read as 'store'",
    )
    bptt_chunk: int | None = Field(None, ge=1, description="truncated BPTT window (None = full)")

    @field_validator("memory", mode="before")
    @classmethod
    def _old_memory_spelling(cls, value: Any) -> Any:
        # older specs (and stored jobs) say "auto", which always stored
        return MEMORY_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _epoch_budget_replaces_steps(cls, data: Any) -> Any:
        # max_epochs alone means "no step budget"; the max_steps default must not fill in.
        if isinstance(data, Mapping) and data.get("max_epochs") is not None:
            if "max_steps" not in data:
                return {**data, "max_steps": None}
        return data

    @model_validator(mode="after")
    def _one_budget(self) -> TrainingSpec:
        if (self.max_steps is None) == (self.max_epochs is None):
            raise ValueError(BUDGET_MSG)
        return self


BUDGET_MSG = (
    "set exactly one of training.max_steps (optimizer steps) and training.max_epochs "
    "(passes over the training split); give the other as null or leave it out"
)


class InitFrom(_Strict):
    """Start from another job's checkpoint (`job` + `checkpoint`) or an uploaded one (`upload`).
    The service resolves it (ownership, the file, the model section) at submission."""

    job: str | None = Field(None, min_length=1, max_length=64, description="a job of yours")
    checkpoint: str = Field(
        "latest", min_length=1, max_length=64, description="'best', 'latest' or a checkpoint id"
    )
    upload: str | None = Field(
        None, min_length=1, max_length=64, description="id from POST /api/v1/checkpoints"
    )

    @model_validator(mode="after")
    def _one_source(self) -> InitFrom:
        if (self.job is None) == (self.upload is None):
            raise ValueError("give exactly one of init_from.job and init_from.upload")
        return self


class JobSpec(_Strict):
    name: str | None = Field(None, max_length=200)
    task: TaskSpec
    model: ModelSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    init_from: InitFrom | None = None
    recipe: str | None = Field(None, max_length=200, description="the recipe it was built from")

    # Derived facts every part needs; computed from the task params, never stored separately.
    @property
    def kind(self) -> str:
        return self.task.info.kind(self.task.params)

    @property
    def seq_len(self) -> int:
        return self.task.info.seq_len(self.task.params)

    @property
    def input_size(self) -> int:
        return self.task.info.input_size(self.task.params)

    @property
    def output_size(self) -> int:
        return self.task.info.output_size(self.task.params)

    @property
    def te_length(self) -> int:
        return self.model.te_length or self.seq_len

    @property
    def train_size(self) -> int | None:
        """Examples in one epoch (the training split), or None for tasks without a finite one."""
        return train_split_size(self.task)

    @property
    def total_steps(self) -> int:
        """The step budget: max_steps, or max_epochs whole passes over the training split
        (batches run on across epoch boundaries, so the last step may start the next pass)."""
        tr = self.training
        if tr.max_steps is not None:
            return tr.max_steps
        return math.ceil(tr.max_epochs * self.train_size / tr.batch_size)

    def epoch_at(self, step: int) -> int | None:
        """The epoch the batch of `step` (0-based) starts in; None without a finite split."""
        n = self.train_size
        return None if not n else (step * self.training.batch_size) // n

    @property
    def uses_te(self) -> bool:
        return self.model.neuron == "celif" and self.model.neuron_params.ce_mode in TE_CE_MODES

    @property
    def network(self) -> NetworkConfig:
        """The network this spec describes (what `models.build_model` builds)."""
        return NetworkConfig.from_spec(self)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------------- validation
class SpecError(ValueError):
    """A spec failed validation. `errors` is a list of {"loc": [...], "msg": str, "type": str}."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


def _fail(loc: list, msg: str, kind: str = "value_error") -> SpecError:
    """A one-error SpecError for the field at `loc`."""
    return SpecError([{"loc": loc, "msg": msg, "type": kind}])


def _error(loc: list, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


def _did_you_mean(name: Any, candidates: list[str]) -> str:
    close = difflib.get_close_matches(str(name), candidates, n=1, cutoff=0.6)
    return (
        f"; did you mean {close[0]!r}?" if close else f"; expected one of: {', '.join(candidates)}"
    )


def _errors(exc: ValidationError, prefix: tuple, model: type[BaseModel]) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            name = err["loc"][0]
            msg = f"unknown field {name!r}{_did_you_mean(name, list(model.model_fields))}"
        out.append(_error([*prefix, *err["loc"]], msg, err["type"]))
    return out


def _collect(model: type[BaseModel], data: Any, prefix: tuple, errors: list[dict[str, Any]]) -> Any:
    """`model` validated from `data`, or None with its errors appended to `errors`: every
    section is checked, so one request reports all its mistakes at once."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        errors.extend(_errors(exc, prefix, model))
        return None


class _RawTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TaskName
    params: dict[str, Any] = Field(default_factory=dict)


class _RawModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    neuron: NeuronName = "celif"
    architecture: Architecture = "feedforward"
    hidden: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1, max_length=8)
    neuron_params: dict[str, Any] = Field(default_factory=dict)
    te_shared: bool = True
    te_length: int | None = Field(None, ge=1)


class _RawSpec(BaseModel):
    """The top level only: each section is validated on its own (`_collect`)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    task: Any
    model: Any = None
    training: Any = None
    init_from: Any = None
    recipe: str | None = Field(None, max_length=200)


DatasetResolver = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class SpecLimits:
    """What one worker can hold: a spec whose estimate (`estimate`) exceeds one is refused with
    an error naming the field to lower, before anything is queued."""

    max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES  # one training or eval step
    max_parameters: int = DEFAULT_MAX_PARAMETERS  # the network, TE table included
    max_eval_set_bytes: int = DEFAULT_MAX_EVAL_SET_BYTES  # one generated val/test set


# For a spec read back from a checkpoint: it was bounded when submitted.
NO_LIMITS = SpecLimits(2**62, 2**62, 2**62)


def validate_spec(
    data: Any,
    *,
    datasets: DatasetResolver | None = None,
    limits: SpecLimits | None = None,
    max_activation_bytes: int | None = None,
) -> JobSpec:
    """Validate a submitted spec and fill in every default.

    `limits` bound the estimated size of the job (default `SpecLimits()`); a bare
    `max_activation_bytes` overrides that one limit.

    `datasets(dataset_id)` returns the stored dataset's facts (seq_len, input_size, output_size,
    kind, target) or None when there is no such dataset (or it is not the submitter's); when given
    it is always consulted for the `dataset` task. Without it the facts must already be in the
    params (a spec read back from a checkpoint).
    """
    if not isinstance(data, Mapping):
        raise _fail([], "spec must be a JSON object", "type_error")
    errors: list[dict[str, Any]] = []
    top = _collect(_RawSpec, data, (), errors)
    task = _collect(_RawTask, data.get("task"), ("task",), errors) if "task" in data else None
    raw_model = _collect(_RawModel, data.get("model"), ("model",), errors)
    raw_training = data.get("training")
    budget_errors = _budget_errors(raw_training) if isinstance(raw_training, Mapping) else []
    errors.extend(budget_errors)
    training = None
    if not budget_errors:
        training = _collect(TrainingSpec, raw_training, ("training",), errors)
    init_from = None
    if data.get("init_from") is not None:
        init_from = _collect(InitFrom, data.get("init_from"), ("init_from",), errors)
    if raw_model is not None:
        for i, width in enumerate(raw_model.hidden):
            if not 1 <= width <= 4096:
                errors.append(
                    _error(
                        ["model", "hidden", i],
                        f"layer width must be between 1 and 4096, got {width}",
                    )
                )
    params = None
    if task is not None:
        task_params = dict(task.params)
        if task.name == "dataset":
            try:
                task_params = _resolve_dataset(task_params, datasets)
            except SpecError as exc:
                errors.extend(exc.errors)
                task_params = None
        if task_params is not None:
            params = _collect(TASKS[task.name].params, task_params, ("task", "params"), errors)
    neuron_params = None
    if raw_model is not None:
        neuron_params = _collect(
            NEURONS[raw_model.neuron].params,
            raw_model.neuron_params,
            ("model", "neuron_params"),
            errors,
        )
    if errors:
        raise SpecError(errors)
    model = ModelSpec(
        **raw_model.model_dump(exclude={"neuron_params"}), neuron_params=neuron_params
    )
    spec = JobSpec(
        name=top.name,
        task=TaskSpec(name=task.name, params=params),
        model=model,
        training=training,
        init_from=init_from,
        recipe=top.recipe,
    )
    limits = limits or SpecLimits()
    if max_activation_bytes is not None:
        limits = replace(limits, max_activation_bytes=max_activation_bytes)
    errors = _epoch_errors(spec) + _cross_field_errors(spec)
    if not errors:  # the estimate needs a step budget and a TE table that covers T
        errors = _limit_errors(spec, limits)
    if errors:
        raise SpecError(errors)
    return spec


BUDGET_FIELDS = ("max_steps", "max_epochs")
EXECUTION_FIELDS = ("device", "backend", "memory")


def continues_run(spec: JobSpec, source: JobSpec) -> bool:
    """Whether a job started from `source`'s checkpoint continues that run exactly (weights,
    optimizer and schedule state, step, best) or starts a new run from its weights: it continues
    when task, model and training agree apart from the budget and where it runs (device,
    backend, memory mode: the fused and reference scans compute the same run)."""
    ignore = {*BUDGET_FIELDS, *EXECUTION_FIELDS}
    ours, theirs = (
        spec.training.model_dump(exclude=ignore),
        source.training.model_dump(exclude=ignore),
    )
    return spec.task == source.task and spec.model == source.model and ours == theirs


def _budget_errors(training: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Exactly one budget, named in the error (TrainingSpec's own check cannot name a field)."""
    steps, epochs = training.get("max_steps"), training.get("max_epochs")
    if epochs is not None and steps is not None:
        return [_error(["training", "max_epochs"], BUDGET_MSG)]
    if "max_steps" in training and steps is None and epochs is None:
        return [_error(["training", "max_steps"], BUDGET_MSG, "missing")]
    return []


def _epoch_errors(spec: JobSpec) -> list[dict[str, Any]]:
    """Epoch-based settings need a training split whose size the spec knows."""
    if spec.train_size is not None:
        return []
    tr = spec.training
    why = (
        f"the {spec.task.name} task generates a fresh batch every step and has no finite "
        "training split, so it has no epochs"
        if spec.task.name in SYNTHETIC_TASKS
        else "the size of an uploaded dataset's training split is not part of the spec"
    )
    errors = []
    if tr.max_epochs is not None:
        errors.append(
            _error(["training", "max_epochs"], f"{why}; give the budget as training.max_steps")
        )
    if tr.lr_schedule == "step":
        errors.append(
            _error(
                ["training", "lr_schedule"],
                f"the step schedule counts epochs and {why}; use 'constant' or 'cosine'",
            )
        )
    return errors


def _resolve_dataset(params: dict[str, Any], datasets: DatasetResolver | None) -> dict[str, Any]:
    facts = ("seq_len", "input_size", "output_size", "target")
    if datasets is None and all(params.get(k) is not None for k in facts):
        # Read back from a checkpoint or a stored job (no resolver): already resolved. With a
        # resolver the dataset is always looked up, so the resolver's ownership check is never
        # skipped by a spec that carries the facts itself; the stored facts replace its own.
        return params
    dataset_id = params.get("dataset_id")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise _fail(
            ["task", "params", "dataset_id"],
            "required: the id returned by POST /api/v1/datasets",
            "missing",
        )
    info = datasets(dataset_id) if datasets is not None else None
    if info is None:
        raise _fail(["task", "params", "dataset_id"], f"no dataset with id {dataset_id!r}")
    resolved = dict(params)
    kind = params.get("kind", "auto")
    if kind == "auto":
        kind = info["kind"]
    resolved["kind"] = kind
    for k in facts:
        resolved[k] = info[k]
    if kind == "regression":
        resolved["output_size"] = 1
    return resolved


def _cross_field_errors(spec: JobSpec) -> list[dict[str, Any]]:
    errors = []
    if spec.model.neuron == "lstm" and spec.model.architecture != "feedforward":
        errors.append(
            _error(
                ["model", "architecture"],
                "the LSTM baseline is recurrent by construction; leave architecture as "
                "'feedforward'",
            )
        )
    if spec.uses_te and spec.te_length < spec.seq_len:
        errors.append(
            _error(
                ["model", "te_length"],
                f"the TE table has {spec.te_length} rows but the task's sequences have "
                f"T={spec.seq_len} steps; te_length must be >= {spec.seq_len}",
            )
        )
    if spec.training.bptt_chunk is not None and spec.model.neuron == "lstm":
        errors.append(
            _error(
                ["training", "bptt_chunk"],
                "truncated BPTT is implemented for the spiking neurons only",
            )
        )
    return errors


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _limit_errors(spec: JobSpec, limits: SpecLimits) -> list[dict[str, Any]]:
    """What no worker within `limits` can hold, each naming the field to lower."""
    est = estimate(spec)
    errors = []
    if est["activation_bytes"] > limits.max_activation_bytes:
        errors.append(
            _error(
                ["training", "batch_size"],
                f"batch of {spec.training.batch_size} sequences of T={spec.seq_len} "
                f"needs about {_gib(est['activation_bytes'])} of activations, over "
                f"the limit of {_gib(limits.max_activation_bytes)}; lower batch_size or "
                f"set training.memory='recompute'",
            )
        )
    if est["eval_activation_bytes"] > limits.max_activation_bytes:
        errors.append(
            _error(
                ["training", "eval_batch_size"],
                f"an evaluation batch of {spec.training.eval_batch_size} sequences of "
                f"T={spec.seq_len} needs about {_gib(est['eval_activation_bytes'])}, over the "
                f"limit of {_gib(limits.max_activation_bytes)}; lower eval_batch_size",
            )
        )
    te = est["te_parameters"]
    if te > limits.max_parameters:
        errors.append(
            _error(
                ["model", "te_length"],
                f"a TE table of {spec.te_length} rows x {te // spec.te_length} neurons is "
                f"{te:,} parameters, over the limit of {limits.max_parameters:,}; te_length "
                f"needs only be T={spec.seq_len}",
            )
        )
    if est["parameters"] - te > limits.max_parameters:
        errors.append(
            _error(
                ["model", "hidden"],
                f"the network has {est['parameters'] - te:,} parameters besides the TE table, "
                f"over the limit of {limits.max_parameters:,}; use fewer or narrower layers",
            )
        )
    for split in ("val", "test"):
        size = getattr(spec.task.params, f"{split}_size", None)
        if size is None or spec.task.name in MNIST_TASKS:
            continue  # MNIST's sets are the fixed files, bounded by them
        nbytes = _eval_set_bytes(spec, size)
        if nbytes > limits.max_eval_set_bytes:
            errors.append(
                _error(
                    ["task", "params", f"{split}_size"],
                    f"{size} {split} sequences of T={spec.seq_len} x {spec.input_size} inputs "
                    f"take about {_gib(nbytes)} in memory, over the limit of "
                    f"{_gib(limits.max_eval_set_bytes)}; lower {split}_size or the sequence "
                    f"length",
                )
            )
    return errors


# ----------------------------------------------------------------------------- estimates
def count_parameters(spec: JobSpec) -> int:
    """Trainable parameters of the network `build_model(spec.network)` builds."""
    return spec.network.num_parameters()


def estimate(spec: JobSpec) -> dict[str, int]:
    """Parameters and a rough activation-memory estimate for one training step."""
    batch, steps, width = spec.training.batch_size, spec.seq_len, sum(spec.model.hidden)
    chunk = min(spec.training.bptt_chunk or steps, steps)
    # float32 tensors of [T, B, N] kept for backward per layer: the layer input current, the
    # membrane, the surrogate argument and the spikes (4), or only the input when recomputing.
    per_element = 1 if spec.training.memory == "recompute" else 4
    activation = 4 * per_element * chunk * batch * width
    activation += 4 * chunk * batch * (spec.input_size + spec.output_size)
    # Evaluation keeps no graph: about the layer input and the membrane of each layer at once.
    eval_batch = spec.training.eval_batch_size
    eval_activation = 4 * 2 * steps * eval_batch * width
    eval_activation += 4 * steps * eval_batch * (spec.input_size + spec.output_size)
    return {
        "parameters": count_parameters(spec),
        "te_parameters": spec.network.te_parameters(),
        "activation_bytes": int(activation),
        "eval_activation_bytes": int(eval_activation),
        "seq_len": steps,
        "total_steps": spec.total_steps,
        "train_size": spec.train_size,
    }


def _eval_set_bytes(spec: JobSpec, size: int) -> int:
    """A generated val/test set of `size` sequences: float32 inputs and per-step targets."""
    return 4 * size * spec.seq_len * (spec.input_size + 1)


# ----------------------------------------------------------------------------- catalogs
def _schema(model: type[_Strict]) -> dict[str, Any]:
    return model.model_json_schema()


def _defaults(model: type[_Strict]) -> dict[str, Any]:
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if not field.is_required()
    }


def catalog_tasks() -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "description": t.description,
            "params_schema": _schema(t.params),
            "defaults": _defaults(t.params),
        }
        for t in TASKS.values()
    ]


def catalog_neurons() -> list[dict[str, Any]]:
    return [
        {
            "name": n.name,
            "description": n.description,
            "architectures": ["feedforward"] if n.name == "lstm" else list(ARCHITECTURES),
            "params_schema": _schema(n.params),
            "defaults": _defaults(n.params),
        }
        for n in NEURONS.values()
    ]


def training_defaults() -> dict[str, Any]:
    return _defaults(TrainingSpec)


def training_schema() -> dict[str, Any]:
    """JSON schema of `training` (field descriptions for the dashboard's help text)."""
    return _schema(TrainingSpec)
