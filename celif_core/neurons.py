"""Thin ``nn.Module`` wrappers around ``celif_core.functional.neuron_scan``.

Each module only holds its hyperparameters (fixed ones as buffers so ``state_dict`` round-trips,
learnable ones as ``nn.Parameter``) and calls the functional scan. State is explicit: pass
``state`` in and read ``result.state`` out; modules keep no hidden memory between calls.

All modules: ``forward(current [T, B, N], te=None, state=None, traces=False) -> ScanResult``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from celif_core.functional import CE_MODES, NeuronState, ScanResult, neuron_scan
from celif_core.functional.reference import TE_MODES
from celif_core.spec import CE_TIMINGS


class _Neuron(nn.Module):
    neuron: str = ""

    def __init__(
        self,
        size: int | None,
        *,
        theta0: float,
        surrogate_width: float,
        detach_reset: bool,
        backend: str,
        memory: str,
    ) -> None:
        super().__init__()
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        if surrogate_width <= 0:
            raise ValueError(f"surrogate_width must be > 0, got {surrogate_width!r}")
        self.size = size
        self.detach_reset = bool(detach_reset)
        self.backend = backend
        self.memory = memory
        self._fixed: tuple[str, ...] = ()  # the neuron-specific fixed hyperparameters, in order
        self._buffer("theta0", theta0)
        self._buffer("surrogate_width", surrogate_width)

    def _buffer(self, name: str, value: float) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number, got {value!r}")
        self.register_buffer(name, torch.tensor(float(value), dtype=torch.float64))

    def _fixed_buffers(self, **values: float) -> None:
        """Register each fixed hyperparameter as a float64 buffer and pass it to the scan."""
        for name, value in values.items():
            self._buffer(name, value)
            self._fixed += (name,)

    def _params(self) -> dict:
        return {
            "theta0": float(self.theta0),
            "surrogate_width": float(self.surrogate_width),
            "detach_reset": self.detach_reset,
            **{name: float(getattr(self, name)) for name in self._fixed},
        }

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
            params=self._params(),
            te=te,
            state=state,
            traces=traces,
            backend=self.backend,
            memory=self.memory,
        )

    def extra_repr(self) -> str:
        return f"size={self.size}, backend={self.backend!r}"


class LIF(_Neuron):
    """Leaky integrate-and-fire with hard reset (paper Eq. 2)."""

    neuron = "lif"

    def __init__(
        self,
        size: int | None = None,
        *,
        alpha: float = 0.5,
        theta0: float = 0.3,
        surrogate_width: float = 0.5,
        detach_reset: bool = False,
        backend: str = "auto",
        memory: str = "save",
    ) -> None:
        super().__init__(
            size,
            theta0=theta0,
            surrogate_width=surrogate_width,
            detach_reset=detach_reset,
            backend=backend,
            memory=memory,
        )
        self._fixed_buffers(alpha=alpha)


class ALIF(_Neuron):
    """Adaptive-threshold LIF (paper Eq. 3): theta = theta0 + beta * eta."""

    neuron = "alif"

    def __init__(
        self,
        size: int | None = None,
        *,
        alpha: float = 0.5,
        rho: float = 0.99,
        theta0: float = 0.3,
        beta: float = 1.8,
        surrogate_width: float = 0.5,
        detach_reset: bool = False,
        backend: str = "auto",
        memory: str = "save",
    ) -> None:
        super().__init__(
            size,
            theta0=theta0,
            surrogate_width=surrogate_width,
            detach_reset=detach_reset,
            backend=backend,
            memory=memory,
        )
        self._fixed_buffers(alpha=alpha, rho=rho, beta=beta)


class PLIF(_Neuron):
    """Parametric LIF (Fang et al. 2021): the decay is learnt, ``alpha = sigmoid(alpha_logit)``.

    The sigmoid keeps alpha in (0, 1) whatever the optimiser does. ``per_neuron=True`` learns
    one decay per neuron (needs ``size``); otherwise one shared scalar.
    """

    neuron = "plif"

    def __init__(
        self,
        size: int | None = None,
        *,
        alpha: float = 0.5,
        per_neuron: bool = False,
        theta0: float = 0.3,
        surrogate_width: float = 0.5,
        detach_reset: bool = False,
        backend: str = "auto",
        memory: str = "save",
    ) -> None:
        super().__init__(
            size,
            theta0=theta0,
            surrogate_width=surrogate_width,
            detach_reset=detach_reset,
            backend=backend,
            memory=memory,
        )
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1) for PLIF, got {alpha!r}")
        if per_neuron and size is None:
            raise ValueError("size is required when per_neuron=True")
        logit = math.log(alpha / (1.0 - alpha))
        shape = (size,) if per_neuron else ()
        self.alpha_logit = nn.Parameter(torch.full(shape, logit))

    @property
    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def _params(self) -> dict:
        return {**super()._params(), "alpha": self.alpha}


class CELIF(_Neuron):
    """CE-LIF (paper Eq. 4): eta[t] = rho * eta[t-1] + CE[t], theta = theta0 + eta.

    ``ce_timing`` chooses the membrane of the membrane ce_modes: ``"current"`` U[t],
    ``"previous"`` the previous step's pre-reset U[t-1] (see ``functional.reference``).

    The temporal-encoding table ``te`` [>=T, N] is normally owned by the network (one table
    shared across layers) and passed to ``forward``. With ``te_steps`` the module owns its own
    learnable table ``te`` [te_steps, size], initialised N(te_init_mean, te_init_std^2).
    """

    neuron = "celif"

    def __init__(
        self,
        size: int | None = None,
        *,
        alpha: float = 0.5,
        rho: float = 0.99,
        theta0: float = 0.3,
        surrogate_width: float = 0.5,
        ce_mode: str = "membrane_te",
        ce_timing: str = "current",
        detach_reset: bool = False,
        te_steps: int | None = None,
        te_init_mean: float = 0.0,
        te_init_std: float = 0.1,
        backend: str = "auto",
        memory: str = "save",
    ) -> None:
        super().__init__(
            size,
            theta0=theta0,
            surrogate_width=surrogate_width,
            detach_reset=detach_reset,
            backend=backend,
            memory=memory,
        )
        if ce_mode not in CE_MODES:
            raise ValueError(f"ce_mode must be one of {list(CE_MODES)}, got {ce_mode!r}")
        self.ce_mode = ce_mode
        if ce_timing not in CE_TIMINGS:
            raise ValueError(f"ce_timing must be one of {list(CE_TIMINGS)}, got {ce_timing!r}")
        self.ce_timing = ce_timing
        self._fixed_buffers(alpha=alpha, rho=rho)
        if te_steps is not None:
            if size is None or not isinstance(te_steps, int) or te_steps <= 0:
                raise ValueError("te_steps must be a positive int, and needs size")
            self.te = nn.Parameter(torch.randn(te_steps, size) * te_init_std + te_init_mean)
        else:
            self.te = None

    def _params(self) -> dict:
        return {**super()._params(), "ce_mode": self.ce_mode, "ce_timing": self.ce_timing}

    def forward(
        self,
        current: torch.Tensor,
        te: torch.Tensor | None = None,
        state: NeuronState | None = None,
        traces: bool = False,
    ) -> ScanResult:
        if te is None and self.ce_mode in TE_MODES:
            te = self.te  # None here makes neuron_scan raise a ValueError naming `te`
        return super().forward(current, te=te, state=state, traces=traces)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ce_mode={self.ce_mode!r}, ce_timing={self.ce_timing!r}"


NEURON_MODULES: dict[str, type[_Neuron]] = {"lif": LIF, "alif": ALIF, "plif": PLIF, "celif": CELIF}
