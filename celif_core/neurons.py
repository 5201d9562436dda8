"""Thin ``nn.Module`` wrappers around ``celif_core.functional``: the neurons the networks use.

Each module holds its fixed hyperparameters as plain attributes (validated, with their defaults,
by the spec's parameter models, ``spec.NEURONS[name].params``: one default per parameter) and its
learnable ones as ``nn.Parameter`` (PLIF's decay, a CE-LIF's own TE table). State is explicit:
pass ``state`` in and read ``result.state`` out; modules keep no hidden memory between calls.

``forward(current [T, B, N], te=None, state=None, traces=False) -> ScanResult`` scans a whole
sequence (``functional.neuron_scan``); ``step(current_t [B, N], state, te_t=None)`` runs one
differentiable timestep (``functional.neuron_step``, for a recurrent network's own loop).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from celif_core.catalog import MEMORY_MODES, SCAN_BACKENDS, TE_CE_MODES
from celif_core.functional import NeuronState, ScanResult, neuron_scan, neuron_step
from celif_core.spec import NEURONS


def te_table(rows: int, width: int, *, te_init_mean: float, te_init_std: float) -> nn.Parameter:
    """A learnable temporal-encoding table ``[rows, width]`` drawn from N(mean, std^2)."""
    return nn.Parameter(torch.randn(rows, width) * te_init_std + te_init_mean)


class _Neuron(nn.Module):
    neuron: str = ""

    def __init__(
        self,
        size: int | None = None,
        *,
        backend: str = "auto",
        memory: str = "store",
        **params: Any,
    ) -> None:
        super().__init__()
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        if backend not in SCAN_BACKENDS:
            raise ValueError(f"backend must be one of {list(SCAN_BACKENDS)}, got {backend!r}")
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {list(MEMORY_MODES)}, got {memory!r}")
        self.size = size
        self.backend = backend
        self.memory = memory  # the scan's: see catalog.MEMORY_MODES
        # a pydantic ValidationError (a ValueError) names the offending parameter
        self.hparams: dict[str, Any] = NEURONS[self.neuron].params(**params).model_dump()

    def scan_params(self) -> dict[str, Any]:
        """The ``params`` mapping the functional scan and step take."""
        return self.hparams

    def _check_size(self, current: torch.Tensor) -> None:
        if self.size is not None and (current.dim() != 3 or current.shape[2] != self.size):
            raise ValueError(
                f"current must be [T, B, {self.size}] for this {type(self).__name__}, "
                f"got shape {list(current.shape)}"
            )

    def forward(
        self,
        current: torch.Tensor,  # [T, B, N]
        te: torch.Tensor | None = None,
        state: NeuronState | None = None,
        traces: bool = False,
    ) -> ScanResult:
        self._check_size(current)
        return neuron_scan(
            current,
            neuron=self.neuron,
            params=self.scan_params(),
            te=te,
            state=state,
            traces=traces,
            backend=self.backend,
            memory=self.memory,
        )

    def step(
        self, current_t: torch.Tensor, state: NeuronState, te_t: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, NeuronState]:
        """One timestep ``[B, N]`` -> (spikes, state); gradients flow through ``state``."""
        return neuron_step(
            current_t, neuron=self.neuron, params=self.scan_params(), te_t=te_t, state=state
        )

    def extra_repr(self) -> str:
        return f"size={self.size}, backend={self.backend!r}"


class LIF(_Neuron):
    """Leaky integrate-and-fire with hard reset (paper Eq. 2)."""

    neuron = "lif"


class ALIF(_Neuron):
    """Adaptive-threshold LIF (paper Eq. 3): theta = theta0 + beta * eta."""

    neuron = "alif"


class PLIF(_Neuron):
    """Parametric LIF (Fang et al. 2021): the decay is learnt, ``alpha = sigmoid(alpha_logit)``.

    The sigmoid keeps alpha in (0, 1) whatever the optimiser does; ``alpha`` is its initial
    value. ``per_neuron=True`` learns one decay per neuron (needs ``size``); otherwise one
    shared scalar (what the networks use).
    """

    neuron = "plif"

    def __init__(self, size: int | None = None, *, per_neuron: bool = False, **kwargs: Any):
        super().__init__(size, **kwargs)
        if per_neuron and size is None:
            raise ValueError("size is required when per_neuron=True")
        alpha = self.hparams["alpha"]
        shape = (size,) if per_neuron else ()
        self.alpha_logit = nn.Parameter(torch.full(shape, math.log(alpha / (1.0 - alpha))))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def scan_params(self) -> dict[str, Any]:
        return {**self.hparams, "alpha": self.alpha}


class CELIF(_Neuron):
    """CE-LIF (paper Eq. 4): eta[t] = rho * eta[t-1] + CE[t], theta = theta0 + eta.

    ``ce_timing`` chooses the membrane of the membrane ce_modes: ``"current"`` U[t],
    ``"previous"`` the previous step's pre-reset U[t-1] (see ``functional.reference``).

    The temporal-encoding table ``te`` [>=T, N] is normally owned by the network (one table
    shared across layers) and passed to ``forward``. With ``te_steps`` the module owns its own
    learnable table ``te`` [te_steps, size], initialised N(te_init_mean, te_init_std^2).
    """

    neuron = "celif"

    def __init__(self, size: int | None = None, *, te_steps: int | None = None, **kwargs: Any):
        super().__init__(size, **kwargs)
        self.te: nn.Parameter | None = None
        if te_steps is not None:
            if size is None or not isinstance(te_steps, int) or te_steps <= 0:
                raise ValueError("te_steps must be a positive int, and needs size")
            self.te = te_table(
                te_steps,
                size,
                te_init_mean=self.hparams["te_init_mean"],
                te_init_std=self.hparams["te_init_std"],
            )

    @property
    def uses_te(self) -> bool:
        return self.hparams["ce_mode"] in TE_CE_MODES

    def forward(
        self,
        current: torch.Tensor,
        te: torch.Tensor | None = None,
        state: NeuronState | None = None,
        traces: bool = False,
    ) -> ScanResult:
        if te is None and self.uses_te:
            te = self.te  # None here makes neuron_scan raise a ValueError naming `te`
        return super().forward(current, te=te, state=state, traces=traces)

    def extra_repr(self) -> str:
        p = self.hparams
        return f"{super().extra_repr()}, ce_mode={p['ce_mode']!r}, ce_timing={p['ce_timing']!r}"


NEURON_MODULES: dict[str, type[_Neuron]] = {"lif": LIF, "alif": ALIF, "plif": PLIF, "celif": CELIF}
