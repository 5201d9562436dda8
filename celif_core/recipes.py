"""Named recipes: full, validated job specs for the paper's experiments (torch-free).

A recipe is a spec a user submits by name (`POST /api/v1/jobs` with `"recipe": name`, optionally
overriding sections) plus where its row belongs in the report and the published figure to
compare with. Metric names are the service's own (`test_accuracy`, `test_mse`, `test_loss`:
what a finished job reports in `latest_metrics`); accuracies are fractions.

Hyperparameters are the paper's table (supplementary "Model Architecture and Hyperparameters":
lr 5e-4 (copy memory 1e-3), batch 256, alpha 0.5, rho 0.99, theta0 0.3, TE init 0.2, three
hidden layers, one shared TE table). The paper names no learning-rate schedule nor epoch count;
the MNIST recipes use neuroseqbench's StepLR (every 10 epochs x0.8) over 100 epochs. The lengths
of the adding / copy-memory panels (paper Fig. 5) are lost from the text; we use T = 100, 200,
500, 1000 for adding (as the issue lists) and delays 100, 200, 500, 1000 for copy memory (an
assumption, said so in each description).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celif_core.spec import CE_MODES, SpecError, validate_spec

TABLE_MNIST = "Seq-MNIST / PS-MNIST (paper Table 1)"
TABLE_ABLATION = "Ablation of the contextual embedding on Seq-MNIST (paper Table 2)"
TABLE_BASELINES = "Feedforward LIF / ALIF / PLIF on Seq-MNIST (paper Table 1)"
TABLE_ADDING = "Adding problem (paper Fig. 5a-d)"
TABLE_COPY = "Copy memory (paper Fig. 5e-h)"
TABLE_NSB = "neuroseqbench's reading of CE-LIF"
TABLE_DEMO = "Demo (tests)"

# The paper's table reads 0.5, 0.99, 0.3, 0.2 with its headers lost: alpha, rho, theta0 are
# certain; the 0.2 may be the TE init scale or the surrogate width, so TE keeps the measured
# default N(0, 0.1^2) (docs/neurons.md), which the long runs in docs/results.md use.
PAPER_NEURON = {"alpha": 0.5, "rho": 0.99, "theta0": 0.3, "te_init_std": 0.1}
MNIST_TASK_PARAMS = {"val_size": 1000}  # 59k train / 1k val; test on all 10,000
MNIST_TRAINING = {
    "max_steps": None,
    "max_epochs": 100,
    "batch_size": 256,
    "lr": 5e-4,
    "optimizer": "adam",
    "lr_schedule": "step",
    "lr_step_epochs": 10,
    "lr_gamma": 0.8,
    "eval_every": 231,  # one epoch of 59,000 images at batch 256
    "checkpoint_every": 231,
}
HIDDEN = {"83k": [64, 88, 88], "154k": [64, 152, 152]}
# ce_mode -> the paper's ablation ID (Table 2) and its Seq-MNIST figure
ABLATION = {
    "none": (1, 0.6866),
    "spike": (2, 0.8755),
    "membrane": (3, 0.9536),
    "te": (4, 0.9555),
    "spike_te": (5, 0.9861),
    "membrane_te": (6, 0.9884),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    table: str
    spec: dict[str, Any]  # the full spec, defaults filled in
    paper: dict[str, Any] | None = None  # {"metric", "value"}
    neuroseqbench: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "table": self.table,
            "spec": copy.deepcopy(self.spec),
            "reference": {"paper": self.paper, "neuroseqbench": self.neuroseqbench},
        }


def _ref(metric: str, value: float | None) -> dict[str, Any] | None:
    return None if value is None else {"metric": metric, "value": value}


def _mnist(task: str, hidden: list[int], neuron: str = "celif", **neuron_params: Any) -> dict:
    params = dict(PAPER_NEURON) if neuron == "celif" else {"alpha": 0.5, "theta0": 0.3}
    params.update(neuron_params)
    return {
        "task": {"name": task, "params": dict(MNIST_TASK_PARAMS)},
        "model": {"neuron": neuron, "hidden": hidden, "neuron_params": params, "te_shared": True},
        "training": dict(MNIST_TRAINING),
    }


def _synthetic(task: str, params: dict[str, Any], *, lr: float) -> dict:
    """The paper's synthetic-task runs: CE-LIF [64, 256, 256], batch 256, 5000 steps."""
    return {
        "task": {"name": task, "params": params},
        "model": {"hidden": [64, 256, 256], "neuron_params": dict(PAPER_NEURON)},
        "training": {"max_steps": 5000, "lr": lr, "batch_size": 256, "eval_every": 100,
                     "checkpoint_every": 500},
    }  # fmt: skip


def _raw_recipes() -> list[tuple[str, str, str, dict, dict | None, dict | None]]:
    out = []
    paper_mnist = {
        ("seq_mnist", "83k"): 0.9819,
        ("ps_mnist", "83k"): 0.9790,
        ("seq_mnist", "154k"): 0.9884,
        ("ps_mnist", "154k"): 0.9814,
    }
    for (task, size), value in paper_mnist.items():
        label = "Seq-MNIST" if task == "seq_mnist" else "PS-MNIST"
        out.append((
            f"paper/{task}-{size}",
            f"{label}, feedforward CE-LIF {HIDDEN[size]} ({size} parameters), the paper's "
            "hyperparameters, 100 epochs, StepLR 10 epochs x0.8.",
            TABLE_MNIST, _mnist(task, HIDDEN[size]), _ref("test_accuracy", value), None,
        ))  # fmt: skip
    for mode, (ident, value) in ABLATION.items():
        spec = _mnist("seq_mnist", HIDDEN["154k"], ce_mode=mode)
        spec["training"]["max_epochs"] = 10
        out.append((
            f"paper/ablation-{mode}",
            f"Ablation ID {ident}: ce_mode {mode!r} on Seq-MNIST, [64,152,152] (the paper's "
            "ablation network), a shorter budget of 10 epochs.",
            TABLE_ABLATION, spec, _ref("test_accuracy", value), None,
        ))  # fmt: skip
    for neuron, value in (("lif", 0.6345), ("alif", None), ("plif", 0.8792)):
        spec = _mnist("seq_mnist", HIDDEN["83k"], neuron=neuron)
        spec["training"]["max_epochs"] = 10
        note = (
            "the paper reports ALIF recurrent only (98.70 % at 156.3k)"
            if neuron == "alif"
            else "paper figure: its feedforward reproduction at 85.1k"
        )
        out.append((
            f"paper/seq_mnist-83k-{neuron}",
            f"Feedforward {neuron.upper()} on Seq-MNIST with the CE-LIF network [64,88,88], "
            f"10 epochs (equal budget for the baselines); {note}.",
            TABLE_BASELINES, spec, _ref("test_accuracy", value), None,
        ))  # fmt: skip
    for seq_len in (100, 200, 500, 1000):
        spec = _synthetic("adding", {"seq_len": seq_len}, lr=5e-4)
        out.append((
            f"paper/adding-{seq_len}",
            f"Adding problem T={seq_len}, CE-LIF [64,256,256]; the paper shows curves only "
            "(Fig. 5; baseline MSE 0.167).",
            TABLE_ADDING, spec, None, None,
        ))  # fmt: skip
    for delay in (100, 200, 500, 1000):
        spec = _synthetic("copy_memory", {"delay": delay}, lr=1e-3)
        out.append((
            f"paper/copy_memory-{delay}",
            f"Copy memory, delay {delay} (T={delay + 20}), CE-LIF [64,256,256], 5000 steps "
            "(the paper: converges within 5,000 iterations; curves only, Fig. 5; the panel "
            "lengths are lost from the text, these delays are our assumption).",
            TABLE_COPY, spec, None, None,
        ))  # fmt: skip
    nsb_neuron = {
        "alpha": 0.5, "theta0": 0.5, "rho": 0.98, "ce_timing": "previous",
        "te_init_mean": 0.01, "te_init_std": 0.01, "surrogate_width": 1.0,
    }  # fmt: skip
    for task, value in (("ps_mnist", 0.9776), ("seq_mnist", None)):
        spec = {
            "task": {"name": task, "params": dict(MNIST_TASK_PARAMS)},
            "model": {"neuron": "celif", "hidden": [64, 90, 90], "neuron_params": nsb_neuron},
            "training": {**MNIST_TRAINING, "lr": 3e-3, "optimizer": "adamw",
                         "weight_decay": 0.0, "grad_clip": None},
        }  # fmt: skip
        out.append((
            f"neuroseqbench/{task}-ff",
            f"neuroseqbench's feedforward CE-LIF config on {task}: [64,90,90], AdamW lr 3e-3 "
            "without weight decay, StepLR 10 epochs x0.8, 100 epochs, no gradient clipping, "
            "eta driven by the previous step's pre-reset membrane.",
            TABLE_NSB, spec, None, _ref("test_accuracy", value),
        ))  # fmt: skip
    out.append(
        (
            "demo/adding-tiny",
            "A few steps of a tiny adding network: for tests and a quick look at the pipeline.",
            TABLE_DEMO,
            {
                "task": {
                    "name": "adding",
                    "params": {"seq_len": 20, "val_size": 64, "test_size": 64},
                },
                "model": {"hidden": [16, 16]},
                "training": {
                    "max_steps": 20,
                    "batch_size": 32,
                    "eval_batch_size": 64,
                    "eval_every": 10,
                    "checkpoint_every": 10,
                    "device": "cpu",
                },
            },  # fmt: skip
            None,
            None,
        )
    )
    return out


def _build() -> dict[str, Recipe]:
    recipes = {}
    for name, description, table, spec, paper, nsb in _raw_recipes():
        full = validate_spec({"name": name, **spec}).to_dict()
        recipes[name] = Recipe(name, description, table, full, paper, nsb)
    return recipes


RECIPES: dict[str, Recipe] = _build()
assert set(CE_MODES) == set(ABLATION)


def get_recipe(name: str) -> Recipe | None:
    return RECIPES.get(name)


def _merge(base: Any, over: Any) -> Any:
    """Dicts merged recursively; scalars and lists replaced."""
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(over)


def apply_recipe(body: Mapping[str, Any]) -> dict[str, Any]:
    """The submitted body with `"recipe": name` expanded: the recipe's spec with the body's
    other sections deep-merged over it; `recipe` is kept. A budget override replaces the
    recipe's budget (giving `max_steps` clears the recipe's `max_epochs`, and the reverse).
    Raises SpecError naming `recipe` for an unknown name."""
    name = body.get("recipe")
    recipe = RECIPES.get(name) if isinstance(name, str) else None
    if recipe is None:
        raise SpecError([{
            "loc": ["recipe"],
            "msg": f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}",
            "type": "value_error",
        }])  # fmt: skip
    overrides = {k: v for k, v in body.items() if k != "recipe"}
    merged = _merge(recipe.spec, overrides)
    training = overrides.get("training")
    if isinstance(training, Mapping):
        for budget, other in (("max_steps", "max_epochs"), ("max_epochs", "max_steps")):
            if training.get(budget) is not None and other not in training:
                merged["training"][other] = None
    if "name" not in overrides:
        merged["name"] = recipe.name
    merged["recipe"] = name
    return merged
