"""Backend dispatch for neuron scans and the public ``lif``/``alif``/``plif``/``celif`` functions.

``neuron_scan`` is the one entry point: it validates the inputs, then runs either the fused
kernel (``celif_core.kernels``: forward and backward each one compiled loop over time) or the
reference Python loop (``reference.py``). Both return the same ``ScanResult``; only ``spikes``
carries gradient, the returned state and traces are detached, and no gradient ever flows into
the ``state`` passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from celif_core.catalog import MEMORY_MODES
from celif_core.catalog import SCAN_BACKENDS as BACKENDS
from celif_core.functional.reference import (
    _CELIF,
    NeuronState,
    ScanResult,
    _check_state,
    _shape_of,
    ce_coefficients,
    needs_te,
    reference_scan,
    resolve_params,
    zero_state,
)

FUSED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- backend reporting


def _fused_impl(device: torch.device) -> str:
    """The compiled kernel that serves ``device``: C++ on CPU, Triton elsewhere (CUDA)."""
    return "cpu" if device.type == "cpu" else "triton"


def _impl_unavailable_reason(impl: str, device: torch.device) -> str | None:
    from celif_core import kernels

    if impl == "cpu":
        if device.type != "cpu":
            return f"the C++ kernel runs CPU tensors, got device {device.type!r}"
        if kernels.load_cpu_extension() is None:
            return f"the CPU extension failed to load ({kernels.cpu_extension_error()})"
        return None
    module = kernels.load_triton()
    if module is None:
        return f"Triton is not available ({kernels.triton_error()})"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu" and module.INTERPRETED:
        return None  # Triton's interpreter (TRITON_INTERPRET=1): slow, for verification
    return f"the Triton kernel runs CUDA tensors (CPU only under TRITON_INTERPRET=1), got {device.type!r}"


def fused_available(device: str | torch.device = "cpu") -> bool:
    """Whether a fused kernel can run on ``device`` (builds the CPU extension on first call)."""
    device = torch.device(device)
    return _impl_unavailable_reason(_fused_impl(device), device) is None


def active_backend(device: str | torch.device = "cpu") -> str:
    """The backend ``backend="auto"`` runs on ``device``: ``"fused-cpu"``, ``"fused-triton"``
    or ``"reference"``."""
    device = torch.device(device)
    return f"fused-{_fused_impl(device)}" if fused_available(device) else "reference"


def _unavailable_reason(impl: str, current: torch.Tensor) -> str | None:
    if current.dtype not in FUSED_DTYPES:
        return f"the fused kernels support float32/float64, got {current.dtype}"
    return _impl_unavailable_reason(impl, current.device)


# --------------------------------------------------------------------------- the scan


def neuron_scan(
    current: torch.Tensor,
    *,
    neuron: str,
    params: Mapping[str, Any],
    te: torch.Tensor | None = None,
    state: NeuronState | None = None,
    traces: bool = False,
    backend: str = "auto",
    memory: str = "store",
) -> ScanResult:
    """Scan ``neuron`` over ``current`` [T, B, N] from ``state`` (zeros if None).

    ``params``: see ``reference.resolve_params``. ``te``: [>=T, N] temporal-encoding table for
    celif ce_modes ``te``/``spike_te``/``membrane_te`` (its first T rows are used).
    ``backend``: ``"auto"`` (fused when available for this device/dtype, else reference),
    ``"fused"`` (the device's compiled kernel: C++ on CPU, Triton on CUDA), ``"triton"`` (the
    Triton kernel; on CPU only under ``TRITON_INTERPRET=1``, for verification) or
    ``"reference"``. ``memory`` (fused only, ``catalog.MEMORY_MODES``): ``"store"`` keeps
    U and one byte per element for backward; ``"recompute"`` keeps only the input current and
    re-runs the forward in backward.
    """
    p = resolve_params(neuron, params)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {list(MEMORY_MODES)}, got {memory!r}")
    if not isinstance(current, torch.Tensor) or current.dim() != 3:
        raise ValueError(f"current must be a [T, B, N] tensor, got {_shape_of(current)}")
    if not current.is_floating_point():
        raise ValueError(f"current must be a floating-point tensor, got {current.dtype}")
    T, B, N = current.shape
    if T == 0:
        raise ValueError("current must have at least one timestep (shape [T>=1, B, N])")
    te_rows = _check_te(te, T, N, p) if needs_te(neuron, p) else None
    alpha = p["alpha"]
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1 and alpha.shape[0] != N:
        raise ValueError(f"alpha must be a scalar or a [N]={[N]} tensor, got {_shape_of(alpha)}")
    if state is not None:
        _check_state(state, (B, N), "state")
        state = NeuronState(*(x.detach().to(current.dtype) for x in state))

    impl = "triton" if backend == "triton" else _fused_impl(current.device)
    if backend == "auto":
        backend = "reference" if _unavailable_reason(impl, current) else "fused"
    elif backend != "reference":
        reason = _unavailable_reason(impl, current)
        if reason:
            raise ValueError(f"backend={backend!r} is not available: {reason}")

    if backend == "reference":
        return reference_scan(current, neuron=neuron, params=p, te=te_rows, state=state,
                              traces=traces)  # fmt: skip

    from celif_core.kernels.fused import fused_scan, make_config

    if isinstance(alpha, torch.Tensor):
        alpha_t = alpha.to(current.dtype)
    else:
        alpha_t = torch.tensor(alpha, dtype=current.dtype)
    cfg = make_config(p, ce_coefficients(neuron, p), memory=memory, traces=traces, impl=impl)
    st = zero_state(current) if state is None else state
    spikes, final, u_tr, th_tr = fused_scan(
        current, None if te_rows is None else te_rows.to(current.dtype), alpha_t, st, cfg
    )
    return ScanResult(spikes, NeuronState(*final), u_tr, th_tr)


def _check_te(te: Any, T: int, N: int, p: Mapping[str, Any]) -> torch.Tensor:
    if not isinstance(te, torch.Tensor) or te.dim() != 2 or te.shape[0] < T or te.shape[1] != N:
        raise ValueError(
            f"te must be a [>=T, N]=[>={T}, {N}] tensor for ce_mode {p['ce_mode']!r}, "
            f"got {_shape_of(te)}"
        )
    # a slice is an autograd node with its own backward ops; skip it when there is nothing to cut
    return te if te.shape[0] == T else te[:T]  # [T, N]


# --------------------------------------------------------------------------- public neurons


def lif(
    current: torch.Tensor,
    *,
    alpha: float,
    theta0: float,
    surrogate_width: float,
    detach_reset: bool = False,
) -> torch.Tensor:
    """LIF spikes [T, B, N] from zero state (paper Eq. 2)."""
    params = dict(
        alpha=alpha, theta0=theta0, surrogate_width=surrogate_width, detach_reset=detach_reset
    )
    return neuron_scan(current, neuron="lif", params=params).spikes


def alif(
    current: torch.Tensor,
    *,
    alpha: float,
    rho: float,
    theta0: float,
    beta: float,
    surrogate_width: float,
    detach_reset: bool = False,
) -> torch.Tensor:
    """Adaptive-threshold LIF spikes [T, B, N] (paper Eq. 3)."""
    params = dict(
        alpha=alpha,
        rho=rho,
        theta0=theta0,
        beta=beta,
        surrogate_width=surrogate_width,
        detach_reset=detach_reset,
    )
    return neuron_scan(current, neuron="alif", params=params).spikes


def plif(
    current: torch.Tensor,
    alpha: torch.Tensor,
    *,
    theta0: float,
    surrogate_width: float,
    detach_reset: bool = False,
) -> torch.Tensor:
    """Parametric LIF spikes [T, B, N]: ``alpha`` is a tensor (scalar or [N]) that gets a grad."""
    params = dict(
        alpha=alpha, theta0=theta0, surrogate_width=surrogate_width, detach_reset=detach_reset
    )
    return neuron_scan(current, neuron="plif", params=params).spikes


def celif(
    current: torch.Tensor,
    te: torch.Tensor,
    *,
    alpha: float,
    rho: float,
    theta0: float,
    surrogate_width: float,
    ce_mode: str = _CELIF.ce_mode,
    detach_reset: bool = False,
) -> torch.Tensor:
    """CE-LIF spikes [T, B, N] (paper Eq. 4); ``te`` is the [T, N] temporal-encoding table."""
    return celif_traces(
        current,
        te,
        alpha=alpha,
        rho=rho,
        theta0=theta0,
        surrogate_width=surrogate_width,
        ce_mode=ce_mode,
        detach_reset=detach_reset,
        traces=False,
    ).spikes


def celif_traces(
    current: torch.Tensor,
    te: torch.Tensor | None,
    *,
    alpha: float,
    rho: float,
    theta0: float,
    surrogate_width: float,
    ce_mode: str = _CELIF.ce_mode,
    detach_reset: bool = False,
    state: NeuronState | None = None,
    traces: bool = True,
) -> ScanResult:
    """CE-LIF scan returning the full ``ScanResult`` (spikes, final state, U and theta traces)."""
    params = dict(
        alpha=alpha,
        rho=rho,
        theta0=theta0,
        surrogate_width=surrogate_width,
        ce_mode=ce_mode,
        detach_reset=detach_reset,
    )
    return neuron_scan(current, neuron="celif", params=params, te=te, state=state, traces=traces)
