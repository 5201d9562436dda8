"""The job spec: what a user submits, validated and with every default filled in.

This module imports no torch, so the API can validate specs and serve the catalogs without
loading the training stack. `validate_spec` is the one entry point; it raises `SpecError`
(a `ValueError`) whose errors name the field as a dotted path, e.g. `task.params.seq_len`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

TaskName = Literal["seq_mnist", "ps_mnist", "adding", "copy_memory", "dataset"]
NeuronName = Literal["lif", "alif", "plif", "celif", "lstm"]
CE_MODES = ("none", "spike", "membrane", "te", "spike_te", "membrane_te")
CeMode = Literal["none", "spike", "membrane", "te", "spike_te", "membrane_te"]
# which membrane drives CE-LIF's threshold memory: U[t] or the previous step's pre-reset U[t-1]
CE_TIMINGS = ("current", "previous")
CeTiming = Literal["current", "previous"]

# Above this estimated activation memory a spec is refused (the batch cannot fit); the service
# passes its own limit from settings.
DEFAULT_MAX_ACTIVATION_BYTES = 32 * 1024**3
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
    if task.name not in ("seq_mnist", "ps_mnist"):
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


# ----------------------------------------------------------------------------- spec sections
class TaskSpec(_Strict):
    name: TaskName
    params: SerializeAsAny[_Strict]

    @property
    def info(self) -> TaskInfo:
        return TASKS[self.name]


class ModelSpec(_Strict):
    neuron: NeuronName = "celif"
    architecture: Literal["feedforward", "recurrent"] = "feedforward"
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
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine", "step"] = Field(
        "constant",
        description="cosine: to 0 over the budget; step: times lr_gamma every lr_step_epochs",
    )
    lr_step_epochs: int = Field(10, ge=1, le=10_000, description="step schedule: epochs per step")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: factor per step")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm (None = off)")
    seed: int = Field(0, ge=0)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "fused", "reference"] = Field(
        "auto", description="neuron scan implementation (reference is for debugging)"
    )
    memory: Literal["auto", "store", "recompute"] = Field(
        "auto", description="store activations for backward, or recompute them (less memory)"
    )
    bptt_chunk: int | None = Field(None, ge=1, description="truncated BPTT window (None = full)")

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
        return self.model.neuron == "celif" and "te" in self.model.neuron_params.ce_mode.split("_")

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


def _errors(exc: ValidationError, prefix: tuple) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _check(model: type[BaseModel], data: Any, prefix: tuple) -> BaseModel:
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise SpecError(_errors(exc, prefix)) from None


class _RawTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: TaskName
    params: dict[str, Any] = Field(default_factory=dict)


class _RawModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    neuron: NeuronName = "celif"
    architecture: Literal["feedforward", "recurrent"] = "feedforward"
    hidden: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1, max_length=8)
    neuron_params: dict[str, Any] = Field(default_factory=dict)
    te_shared: bool = True
    te_length: int | None = Field(None, ge=1)


class _RawSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=200)
    task: _RawTask
    model: _RawModel = Field(default_factory=_RawModel)
    training: dict[str, Any] = Field(default_factory=dict)
    init_from: dict[str, Any] | None = None
    recipe: str | None = Field(None, max_length=200)


DatasetResolver = Callable[[str], Mapping[str, Any] | None]


def validate_spec(
    data: Any,
    *,
    datasets: DatasetResolver | None = None,
    max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES,
) -> JobSpec:
    """Validate a submitted spec and fill in every default.

    `datasets(dataset_id)` returns the stored dataset's facts (seq_len, input_size, output_size,
    kind, target) or None when there is no such dataset; it is needed only for the `dataset`
    task when those facts are not already in the params (a spec read back from a checkpoint).
    """
    if not isinstance(data, Mapping):
        raise _fail([], "spec must be a JSON object", "type_error")
    raw = _check(_RawSpec, data, ())
    for i, width in enumerate(raw.model.hidden):
        if not 1 <= width <= 4096:
            raise _fail(
                ["model", "hidden", i], f"layer width must be between 1 and 4096, got {width}"
            )

    task_params = dict(raw.task.params)
    if raw.task.name == "dataset":
        task_params = _resolve_dataset(task_params, datasets)
    params = _check(TASKS[raw.task.name].params, task_params, ("task", "params"))
    neuron_params = _check(
        NEURONS[raw.model.neuron].params, raw.model.neuron_params, ("model", "neuron_params")
    )
    _check_budget(raw.training)
    training = _check(TrainingSpec, raw.training, ("training",))
    init_from = None if raw.init_from is None else _check(InitFrom, raw.init_from, ("init_from",))
    model = ModelSpec(
        **raw.model.model_dump(exclude={"neuron_params"}), neuron_params=neuron_params
    )
    spec = JobSpec(
        name=raw.name,
        task=TaskSpec(name=raw.task.name, params=params),
        model=model,
        training=training,
        init_from=init_from,
        recipe=raw.recipe,
    )
    _check_epochs(spec)
    _check_cross_fields(spec, max_activation_bytes)
    return spec


BUDGET_FIELDS = ("max_steps", "max_epochs")


def continues_run(spec: JobSpec, source: JobSpec) -> bool:
    """Whether a job started from `source`'s checkpoint continues that run exactly (weights,
    optimizer and schedule state, step, best) or starts a new run from its weights: it continues
    when task, model and training agree apart from the budget."""
    ignore = set(BUDGET_FIELDS)
    ours, theirs = (
        spec.training.model_dump(exclude=ignore),
        source.training.model_dump(exclude=ignore),
    )
    return spec.task == source.task and spec.model == source.model and ours == theirs


def _check_budget(training: Mapping[str, Any]) -> None:
    """Exactly one budget, named in the error (TrainingSpec's own check cannot name a field)."""
    steps, epochs = training.get("max_steps"), training.get("max_epochs")
    if epochs is not None and steps is not None:
        raise _fail(["training", "max_epochs"], BUDGET_MSG)
    if "max_steps" in training and steps is None and epochs is None:
        raise _fail(["training", "max_steps"], BUDGET_MSG, "missing")


def _check_epochs(spec: JobSpec) -> None:
    """Epoch-based settings need a training split whose size the spec knows."""
    if spec.train_size is not None:
        return
    tr = spec.training
    why = (
        f"the {spec.task.name} task generates a fresh batch every step and has no finite "
        "training split, so it has no epochs"
        if spec.task.name in ("adding", "copy_memory")
        else "the size of an uploaded dataset's training split is not part of the spec"
    )
    if tr.max_epochs is not None:
        raise _fail(["training", "max_epochs"], f"{why}; give the budget as training.max_steps")
    if tr.lr_schedule == "step":
        raise _fail(
            ["training", "lr_schedule"],
            f"the step schedule counts epochs and {why}; use 'constant' or 'cosine'",
        )


def _resolve_dataset(params: dict[str, Any], datasets: DatasetResolver | None) -> dict[str, Any]:
    facts = ("seq_len", "input_size", "output_size", "target")
    if all(params.get(k) is not None for k in facts):
        return params  # already resolved (e.g. read back from a checkpoint)
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


def _check_cross_fields(spec: JobSpec, max_activation_bytes: int) -> None:
    if spec.model.neuron == "lstm" and spec.model.architecture != "feedforward":
        raise _fail(
            ["model", "architecture"],
            "the LSTM baseline is recurrent by construction; leave architecture as 'feedforward'",
        )
    if spec.uses_te and spec.te_length < spec.seq_len:
        raise _fail(
            ["model", "te_length"],
            f"the TE table has {spec.te_length} rows but the task's sequences have "
            f"T={spec.seq_len} steps; te_length must be >= {spec.seq_len}",
        )
    if spec.training.bptt_chunk is not None and spec.model.neuron == "lstm":
        raise _fail(
            ["training", "bptt_chunk"], "truncated BPTT is implemented for the spiking neurons only"
        )
    est = estimate(spec)
    if est["activation_bytes"] > max_activation_bytes:
        raise _fail(
            ["training", "batch_size"],
            f"batch of {spec.training.batch_size} sequences of T={spec.seq_len} "
            f"needs about {est['activation_bytes'] / 2**30:.1f} GiB of activations, over "
            f"the limit of {max_activation_bytes / 2**30:.1f} GiB; lower batch_size or "
            f"set training.memory='recompute'",
        )


# ----------------------------------------------------------------------------- estimates
def count_parameters(spec: JobSpec) -> int:
    """Trainable parameters of the network `build_model(spec)` builds (checked by a test)."""
    sizes = [spec.input_size, *spec.model.hidden]
    total = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        if spec.model.neuron == "lstm":
            total += 4 * n_out * (n_in + n_out) + 8 * n_out  # W_ih, W_hh, b_ih, b_hh
            continue
        total += n_in * n_out + n_out
        if spec.model.architecture == "recurrent":
            total += n_out * n_out  # W_rec, no bias
        if spec.model.neuron == "plif":
            total += 1  # one learnable decay per layer
    if spec.uses_te:
        hidden = spec.model.hidden
        width = max(hidden) if spec.model.te_shared else sum(hidden)
        total += spec.te_length * width
    total += spec.model.hidden[-1] * spec.output_size + spec.output_size
    return total


def estimate(spec: JobSpec) -> dict[str, int]:
    """Parameters and a rough activation-memory estimate for one training step."""
    batch, steps, width = spec.training.batch_size, spec.seq_len, sum(spec.model.hidden)
    chunk = min(spec.training.bptt_chunk or steps, steps)
    # float32 tensors of [T, B, N] kept for backward per layer: the layer input current, the
    # membrane, the surrogate argument and the spikes (4), or only the input when recomputing.
    per_element = 1 if spec.training.memory == "recompute" else 4
    activation = 4 * per_element * chunk * batch * width
    activation += 4 * chunk * batch * (spec.input_size + spec.output_size)
    return {
        "parameters": count_parameters(spec),
        "activation_bytes": int(activation),
        "seq_len": steps,
        "total_steps": spec.total_steps,
        "train_size": spec.train_size,
    }


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
            "architectures": ["feedforward"] if n.name == "lstm" else ["feedforward", "recurrent"],
            "params_schema": _schema(n.params),
            "defaults": _defaults(n.params),
        }
        for n in NEURONS.values()
    ]


def training_defaults() -> dict[str, Any]:
    return _defaults(TrainingSpec)
