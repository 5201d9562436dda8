"""The training loop: setup / train / evaluate / save_checkpoint / load_checkpoint.

Progress goes to a callbacks object (all methods optional)::

    on_metrics(points: list[MetricPoint])   # batches of learning-curve points
    on_checkpoint(info: CheckpointInfo)     # after each checkpoint file is written
    should_stop() -> bool                   # checked before every step: True stops promptly
    on_step(step, total_steps)              # after every optimizer step (total: the budget)

A MetricPoint is ``{"step", "epoch", "split", "name", "value", "time"}``: ``train/loss`` every
step (delivered every few steps), ``val/<metric>`` every ``eval_every`` steps and at the end,
``test/<metric>`` once at the end, and the task's trivial baseline as ``baseline/<metric>``.

Training batches are a pure function of ``(training.seed, step)``, so a run resumed from a
checkpoint at step k sees exactly the batches a straight run sees, and its losses match.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from celif_core.checkpoint import CheckpointInfo, encode, read_checkpoint, write_atomic
from celif_core.errors import TrainingError
from celif_core.models import CelifNetwork, build_model
from celif_core.spec import JobSpec, continues_run, validate_spec
from celif_core.tasks import MetricSums, Task, build_task
from celif_core.telemetry import spec_energy_estimate

MetricPoint = dict[str, Any]
TRAIN_FLUSH_EVERY = 10  # train-loss points are delivered to on_metrics in batches of this many


@dataclass(frozen=True)
class DataDirs:
    mnist: str | os.PathLike | None = None  # CELIF_MNIST_DIR
    datasets: str | os.PathLike | None = None  # where uploaded <dataset_id>.npz files live
    download: bool = True  # fetch MNIST from the usual mirrors when absent


@dataclass
class TrainResult:
    status: str  # "completed" | "stopped"
    step: int
    metrics: dict[str, float]  # flat: train_loss, val_<m>, test_<m> (test only when completed)
    best: dict[str, Any] | None = None  # {"step", "metric", "value", "mode"}
    telemetry: dict[str, Any] | None = None  # firing rates and energy (completed runs)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    backend: str | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("training.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def lr_at(spec: JobSpec, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a pure function of the spec and the
    step, so a resumed run follows the schedule exactly. The step schedule's epoch is the one
    the step's batch starts in."""
    tr = spec.training
    if tr.lr_schedule == "cosine":
        total = spec.total_steps
        return tr.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if tr.lr_schedule == "step":
        return tr.lr * tr.lr_gamma ** (spec.epoch_at(step) // tr.lr_step_epochs)
    return tr.lr


def _better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class Trainer:
    def __init__(
        self,
        spec: JobSpec | dict,
        *,
        checkpoint_dir: str | os.PathLike,
        callbacks: Any = None,
        data_dirs: DataDirs | None = None,
        checkpoint_on_stop: bool = False,
    ):
        self.spec = spec if isinstance(spec, JobSpec) else validate_spec(spec)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.callbacks = callbacks
        self.data_dirs = data_dirs or DataDirs()
        self.checkpoint_on_stop = checkpoint_on_stop
        self.task: Task | None = None
        self.model: CelifNetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.device = torch.device("cpu")
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.best_checkpoint_value: float | None = None
        self.last_val: dict[str, float] = {}
        self.last_val_step: int | None = None
        self.last_train_loss: float | None = None
        self.last_firing_rates: dict[str, list[float]] = {}
        self._pending: list[MetricPoint] = []
        self.checkpoints: list[CheckpointInfo] = []

    # ------------------------------------------------------------------ callbacks
    def _call(self, name: str, *args: Any) -> Any:
        fn = getattr(self.callbacks, name, None) if self.callbacks is not None else None
        return fn(*args) if fn is not None else None

    def _point(self, split: str, name: str, value: float, step: int | None = None) -> MetricPoint:
        s = self.step if step is None else step
        return {
            "step": s,
            "epoch": self.task.epoch_of(s, self.spec.training.batch_size),
            "split": split,
            "name": name,
            "value": float(value),
            "time": time.time(),
        }

    def _flush(self) -> None:
        if self._pending:
            points, self._pending = self._pending, []
            self._call("on_metrics", points)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, resume_from: str | os.PathLike | None = None) -> None:
        """Build task, model and optimizer (seeded); load ``resume_from`` if given."""
        tr = self.spec.training
        self.device = resolve_device(tr.device)
        self.task = build_task(
            self.spec,
            mnist_dir=self.data_dirs.mnist,
            datasets_dir=self.data_dirs.datasets,
            download=self.data_dirs.download,
        )
        # Seed model init without touching the process-wide generator (a worker runs job after job).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tr.seed)
            model = build_model(self.spec.network, backend=tr.backend, memory=tr.memory)
            self.model = model.to(self.device)
        self.model.train()
        params = list(self.model.parameters())
        if tr.optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=tr.lr, weight_decay=tr.weight_decay)
        elif tr.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(
                params, lr=tr.lr, momentum=0.9, weight_decay=tr.weight_decay
            )
        if self.spec.train_size is not None and self.task.train_size != self.spec.train_size:
            # Epoch budgets and the step schedule count from the spec's split size.
            raise TrainingError(
                f"the {self.spec.task.name} training split has {self.task.train_size} examples, "
                f"the spec expects {self.spec.train_size}"
            )
        self.step = 0
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    def _require_setup(self) -> None:
        if self.model is None or self.task is None or self.optimizer is None:
            raise RuntimeError("call Trainer.setup() first")

    def _lr_at(self, step: int) -> float:
        return lr_at(self.spec, step)

    # ------------------------------------------------------------------ one step
    def _train_step(self) -> float:
        tr, task, model = self.spec.training, self.task, self.model
        x, y = task.train_batch(self.step, tr.batch_size, tr.seed)
        x, y = x.to(self.device), y.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        chunk = tr.bptt_chunk
        if chunk is not None and chunk < x.shape[1]:
            loss_value = self._truncated_bptt(x, y, chunk)
        else:
            loss = task.loss(model(x), y)
            loss_value = float(loss.detach())
            self._check_finite(loss_value)
            loss.backward()
        if tr.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
        self.optimizer.step()
        return loss_value

    def _truncated_bptt(self, x: torch.Tensor, y: torch.Tensor, chunk: int) -> float:
        """Chunks of ``chunk`` steps with the state detached between them; gradients of every
        chunk accumulate into one optimizer step. Per-step losses (sequence kinds) are split over
        the chunks (weighted so they sum to the full loss); a per-sequence loss reaches the last
        chunk only."""
        task, model = self.task, self.model
        steps = x.shape[1]
        per_step = task.kind in ("sequence", "sequence_regression")
        state = model.initial_state(x.shape[0])
        total, t0 = 0.0, 0
        for xc in torch.split(x, chunk, dim=1):
            n = xc.shape[1]
            out, state = model.forward_chunk(xc, state)
            last = t0 + n == steps
            if per_step:
                loss = task.loss(out, y[:, t0 : t0 + n]) * (n / steps)
            elif last:
                loss = task.loss(out, y)
            else:
                t0 += n
                continue
            value = float(loss.detach())
            self._check_finite(value)
            loss.backward()
            total += value
            t0 += n
        return total

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingError(
                f"training loss became {value} at step {self.step + 1}; lower training.lr or "
                f"set training.grad_clip"
            )

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        self._require_setup()
        tr, task = self.spec.training, self.task
        if self.step == 0 and task.baseline is not None:
            self._pending.append(self._point("baseline", task.baseline_metric, task.baseline, 0))
        status = "completed"
        total = self.spec.total_steps
        while self.step < total:
            if self._call("should_stop"):
                status = "stopped"
                break
            loss = self._train_step()
            self.step += 1
            self.last_train_loss = loss
            self._pending.append(self._point("train", "loss", loss))
            if self.step % TRAIN_FLUSH_EVERY == 0:
                self._flush()
            self._call("on_step", self.step, total)
            if self.step % tr.eval_every == 0 or self.step == total:
                self._validate()
            if self.step % tr.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
        if status == "stopped":
            self._flush()
            if (
                self.checkpoint_on_stop
                and self.step > 0
                and (not self.checkpoints or self.checkpoints[-1].step != self.step)
            ):
                self.save_checkpoint()
            return TrainResult(
                "stopped", self.step, self._result_metrics(), self._best_summary(),
                checkpoints=list(self.checkpoints), backend=self.model.backend_name,
            )  # fmt: skip
        if self.last_val_step != self.step:  # resumed at max_steps, or max_steps == 0
            self._validate()
        if not self.checkpoints or self.checkpoints[-1].step != self.step:
            self.save_checkpoint()
        test = self.evaluate("test")
        self._pending.extend(self._point("test", k, v) for k, v in test.items())
        telemetry = self.telemetry("test")
        self._flush()
        metrics = self._result_metrics()
        metrics.update({f"test_{k}": v for k, v in test.items()})
        return TrainResult(
            "completed", self.step, metrics, self._best_summary(), telemetry,
            list(self.checkpoints), self.model.backend_name,
        )  # fmt: skip

    def _validate(self) -> dict[str, float]:
        val = self.evaluate("val")
        self.last_val, self.last_val_step = val, self.step
        self._pending.extend(self._point("val", k, v) for k, v in val.items())
        self._flush()
        metric = self.task.primary_metric
        if _better(val[metric], None if self.best is None else self.best["value"], self.task.mode):
            self.best = {
                "step": self.step,
                "metric": metric,
                "value": val[metric],
                "mode": self.task.mode,
            }
        return val

    def _result_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.last_train_loss is not None:
            out["train_loss"] = self.last_train_loss
        out.update({f"val_{k}": v for k, v in self.last_val.items()})
        return out

    def _best_summary(self) -> dict[str, Any] | None:
        return dict(self.best) if self.best is not None else None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Loss and metrics on the ``val`` or ``test`` set; records firing rates."""
        self._require_setup()
        model, task = self.model, self.task
        was_training = model.training
        model.eval()
        sums: MetricSums | None = None
        rate_sums: list[float] | None = None
        count = 0
        try:
            for x, y in task.eval_batches(split, self.spec.training.eval_batch_size):
                x, y = x.to(self.device), y.to(self.device)
                out = model.run(x)
                batch = task.metric_sums(out.output, y)
                sums = batch if sums is None else sums.merged(batch)
                b = x.shape[0]
                rates = [r * b for r in out.firing_rates]
                rate_sums = (
                    rates
                    if rate_sums is None
                    else [a + r for a, r in zip(rate_sums, rates, strict=True)]
                )
                count += b
        finally:
            model.train(was_training)
        if sums is None:
            raise TrainingError(f"the {split} set is empty")
        self.last_firing_rates[split] = [r / count for r in (rate_sums or [])]
        return sums.values()

    def telemetry(self, split: str = "test") -> dict[str, Any]:
        """Firing rates of the last ``split`` evaluation and the energy estimate per sequence."""
        rates = self.last_firing_rates.get(split)
        if rates is None:
            self.evaluate(split)
            rates = self.last_firing_rates[split]
        energy = spec_energy_estimate(self.spec, seq_len=self.spec.seq_len, firing_rates=rates)
        return {"split": split, "firing_rates": rates, **energy}

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda.{i}"] = st
        return rng

    def save_checkpoint(self) -> CheckpointInfo:
        """Write ``step_<step>.safetensors`` atomically (evaluating val first if it is stale)."""
        self._require_setup()
        if self.last_val_step != self.step:
            self._validate()
        metric = self.task.primary_metric
        value = self.last_val[metric]
        is_best = _better(value, self.best_checkpoint_value, self.task.mode)
        if is_best:
            self.best_checkpoint_value = value
        metrics = {f"val_{k}": v for k, v in self.last_val.items()}
        if self.last_train_loss is not None:
            metrics["train_loss"] = self.last_train_loss
        payload = encode(
            spec=self.spec,
            model_state=self.model.state_dict(),
            step=self.step,
            metrics=metrics,
            optimizer_state=self.optimizer.state_dict(),
            rng=self._rng_state(),
            extra={
                "best": self.best,
                "best_checkpoint_value": self.best_checkpoint_value,
                "is_best": is_best,
                "primary_metric": metric,
                "mode": self.task.mode,
                "last_val": self.last_val,
                "last_val_step": self.last_val_step,
                "last_train_loss": self.last_train_loss,
            },
        )
        path = self.checkpoint_dir / f"step_{self.step:08d}.safetensors"
        size, sha = write_atomic(path, payload)
        info = CheckpointInfo(path, self.step, metrics, size, sha, is_best)
        self.checkpoints.append(info)
        self._call("on_checkpoint", info)
        return info

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, RNG, step and best from a checkpoint of the same job."""
        self._require_setup()
        data = read_checkpoint(path)
        meta = data.metadata
        theirs = meta["spec"]
        ours = self.spec.model_dump(mode="json")
        for section in ("task", "model"):
            if theirs.get(section) != ours[section]:
                raise ValueError(
                    f"checkpoint {path} was trained with a different {section} section: "
                    f"{theirs.get(section)} != {ours[section]}"
                )
        self.model.load_state_dict(data.model)
        if data.optimizer is not None:
            self.optimizer.load_state_dict(data.optimizer)
        if "torch" in data.rng:
            torch.set_rng_state(data.rng["torch"])
        self.step = int(meta["step"])
        self.best = meta.get("best")
        self.best_checkpoint_value = meta.get("best_checkpoint_value")
        self.last_val = dict(meta.get("last_val") or {})
        self.last_val_step = meta.get("last_val_step")
        self.last_train_loss = meta.get("last_train_loss")

    def init_from(self, path: str | os.PathLike) -> bool:
        """Start from another run's checkpoint (spec `init_from`); returns whether the run
        continues it. With the same task, model and training section apart from the budget
        (`continues_run`) it restores everything `load_checkpoint` does, so the run goes on
        exactly; otherwise only the weights, and this run starts at step 0 with a fresh
        optimizer."""
        self._require_setup()
        data = read_checkpoint(path)
        source = validate_spec(data.metadata["spec"])
        if source.model != self.spec.model:
            raise TrainingError(f"init_from checkpoint {path} has a different model section")
        if continues_run(self.spec, source):
            self.load_checkpoint(path)
            return True
        self.model.load_state_dict(data.model)
        return False

    def cleanup(self) -> None:
        self._flush()
        self.model = self.optimizer = self.task = None
