"""Reference neuron dynamics, written straight from DESIGN.md section 3.

Plain differentiable PyTorch, one timestep at a time. This is the ground truth the fused
kernels are tested against, and the step function recurrent networks call inside their own
loop. It is deliberately simple and slow; the hot path is ``scan.neuron_scan`` with the fused
backend.

Every neuron shares one step::

    U[t]     = alpha * U[t-1] * (1 - S[t-1]) + I[t]        # hard reset
    eta[t]   = rho * eta[t-1] + gain * CE[t]                # threshold memory
    theta[t] = theta0 + scale * eta[t]
    S[t]     = H(U[t] - theta[t])                           # boxcar surrogate gradient

with, per neuron:

    lif / plif : theta = theta0 (eta is carried through untouched)
    alif       : CE = S[t-1], gain = 1 - rho, scale = beta
    celif      : CE from ``ce_mode``, gain = 1, scale = 1

CE-LIF's ``ce_timing`` picks which membrane drives the threshold memory in the membrane modes:
``"current"`` uses this step's ``U[t]`` (DESIGN.md section 3's reading), ``"previous"`` the
previous step's ``U[t-1]`` before its hard reset (neuroseqbench's reading). ``NeuronState.u``
holds that pre-reset value (the reset is applied when the next step reads it), so a carried
state is all "previous" needs across chunks; ``U[-1]`` of a fresh scan is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from celif_core.catalog import CE_MODES, CE_TIMINGS, TE_CE_MODES
from celif_core.catalog import SPIKING_NEURONS as NEURONS
from celif_core.spec import CelifParams

_CELIF = CelifParams()  # the defaults of the optional ce_mode / ce_timing


class NeuronState(NamedTuple):
    """Neuron state between timesteps, each ``[B, N]``."""

    u: torch.Tensor  # membrane potential U[t]
    s: torch.Tensor  # last spikes S[t] (0./1. in the current's dtype)
    eta: torch.Tensor  # threshold memory eta[t] (zero and unused for lif/plif)


class ScanResult(NamedTuple):
    """Output of a scan over time."""

    spikes: torch.Tensor  # [T, B, N], carries gradient
    state: NeuronState  # state after the last step, detached
    u: torch.Tensor | None  # [T, B, N] membrane trace (traces=True), detached
    theta: torch.Tensor | None  # [T, B, N] threshold trace (traces=True), detached


# --------------------------------------------------------------------------- spike function


class BoxcarSpike(torch.autograd.Function):
    """Heaviside forward, boxcar surrogate backward: dS/dv = (1/a) * 1{|v| < a/2}."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, width: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.width = width
        return (v >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_spike: torch.Tensor):
        (v,) = ctx.saved_tensors
        window = (v.abs() < ctx.width / 2).to(v.dtype)
        return grad_spike * window / ctx.width, None


def spike_fn(v: torch.Tensor, width: float) -> torch.Tensor:
    """Heaviside of ``v = U - theta`` with the boxcar surrogate gradient."""
    return BoxcarSpike.apply(v, width)


def spike_fn_primitive(v: torch.Tensor, width: float) -> torch.Tensor:
    """Primitive twin of :func:`spike_fn` built from differentiable ops only.

    Forward is the Heaviside step; the gradient is that of ``clamp(v / a + 1/2, 0, 1)``, i.e.
    ``1/a`` inside the window. Used by tests to check the hand-written backward.
    """
    ramp = torch.clamp(v / width + 0.5, 0.0, 1.0)
    step = (v >= 0).to(v.dtype)
    return ramp + (step - ramp).detach()


# --------------------------------------------------------------------------- parameters


def resolve_params(neuron: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``params`` for ``neuron`` and return a normalised copy.

    Keys: ``alpha`` (float, or a tensor scalar/[N] for plif), ``theta0``, ``surrogate_width``,
    ``detach_reset``; alif adds ``rho`` and ``beta``; celif adds ``rho``, ``ce_mode`` and
    ``ce_timing``.
    """
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {list(NEURONS)}, got {neuron!r}")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping of neuron parameters, got {type(params)}")
    required = {
        "lif": ("alpha", "theta0", "surrogate_width"),
        "plif": ("alpha", "theta0", "surrogate_width"),
        "alif": ("alpha", "rho", "theta0", "beta", "surrogate_width"),
        "celif": ("alpha", "rho", "theta0", "surrogate_width"),
    }[neuron]
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"params for neuron {neuron!r} is missing {missing}")
    out: dict[str, Any] = {"detach_reset": bool(params.get("detach_reset", False))}
    for key in required:
        value = params[key]
        if key == "alpha" and isinstance(value, torch.Tensor):
            if value.dim() > 1:
                raise ValueError(
                    f"alpha must be a scalar or a [N] tensor, got shape {tuple(value.shape)}"
                )
            out[key] = value
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"params[{key!r}] must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"params[{key!r}] must be finite, got {value!r}")
        out[key] = float(value)
    if out["surrogate_width"] <= 0:
        raise ValueError(f"surrogate_width must be > 0, got {out['surrogate_width']}")
    if neuron == "celif":
        ce_mode = params.get("ce_mode", _CELIF.ce_mode)
        if ce_mode not in CE_MODES:
            raise ValueError(f"ce_mode must be one of {list(CE_MODES)}, got {ce_mode!r}")
        out["ce_mode"] = ce_mode
        ce_timing = params.get("ce_timing", _CELIF.ce_timing)
        if ce_timing not in CE_TIMINGS:
            raise ValueError(f"ce_timing must be one of {list(CE_TIMINGS)}, got {ce_timing!r}")
        out["ce_timing"] = ce_timing
    else:
        # lif/plif never move eta; alif is the spike-driven case
        out["ce_mode"] = "spike" if neuron == "alif" else "none"
        out["ce_timing"] = "current"
    return out


def needs_te(neuron: str, params: Mapping[str, Any]) -> bool:
    return neuron == "celif" and params.get("ce_mode", _CELIF.ce_mode) in TE_CE_MODES


def ce_coefficients(neuron: str, p: Mapping[str, Any]) -> tuple[float, float, float]:
    """(rho, gain, scale) of ``eta[t] = rho*eta[t-1] + gain*CE[t]``, ``theta = theta0 + scale*eta``."""
    if neuron == "alif":
        return p["rho"], 1.0 - p["rho"], p["beta"]
    if neuron == "celif":
        return p["rho"], 1.0, 1.0
    return 1.0, 0.0, 0.0  # lif / plif: eta is carried through, theta stays theta0


# --------------------------------------------------------------------------- step and scan


def zero_state(current: torch.Tensor) -> NeuronState:
    """Zero state shaped like one timestep of ``current`` ([T, B, N] -> [B, N])."""
    z = current.new_zeros(current.shape[1:])
    return NeuronState(z, z, z)


def _step(
    current_t: torch.Tensor,  # [B, N]
    te_t: torch.Tensor | None,  # [N] or None
    state: NeuronState,
    neuron: str,
    p: Mapping[str, Any],
) -> tuple[torch.Tensor, NeuronState, torch.Tensor]:
    """One timestep on already validated params; also returns theta[t] for traces."""
    u_prev, s_prev, eta_prev = state
    reset = 1.0 - (s_prev.detach() if p["detach_reset"] else s_prev)
    u = p["alpha"] * u_prev * reset + current_t  # [B, N]

    rho, gain, scale = ce_coefficients(neuron, p)
    mode = p["ce_mode"]
    # the membrane the membrane modes read: U[t], or U[t-1] before its reset ("previous")
    u_ce = u_prev if p["ce_timing"] == "previous" else u
    if mode == "none":
        ce = None
    elif mode == "spike":
        ce = s_prev
    elif mode == "membrane":
        ce = u_ce
    elif mode == "te":
        ce = te_t.expand_as(u)
    elif mode == "spike_te":
        ce = s_prev * te_t
    else:  # membrane_te: the CE-LIF contextual embedding U * TE[t]
        ce = u_ce * te_t
    eta = eta_prev if ce is None and rho == 1.0 else rho * eta_prev
    if ce is not None:
        eta = eta + gain * ce
    theta = p["theta0"] + scale * eta if scale != 0.0 else torch.full_like(u, p["theta0"])
    s = spike_fn(u - theta, p["surrogate_width"])
    return s, NeuronState(u, s, eta), theta


def neuron_step(
    current_t: torch.Tensor,
    *,
    neuron: str,
    params: Mapping[str, Any],
    te_t: torch.Tensor | None = None,
    state: NeuronState,
) -> tuple[torch.Tensor, NeuronState]:
    """One differentiable timestep: ``current_t`` [B, N], ``te_t`` [N] -> (spikes [B, N], state).

    Gradients flow through ``state`` (a recurrent network's own loop relies on that).
    """
    p = resolve_params(neuron, params)
    if not isinstance(current_t, torch.Tensor) or current_t.dim() != 2:
        raise ValueError(f"current_t must be a [B, N] tensor, got {_shape_of(current_t)}")
    _check_state(state, tuple(current_t.shape), "state")
    if needs_te(neuron, p):
        if not isinstance(te_t, torch.Tensor) or te_t.shape != current_t.shape[1:]:
            raise ValueError(
                f"te_t must be a [N]={[current_t.shape[1]]} tensor for ce_mode "
                f"{p['ce_mode']!r}, got {_shape_of(te_t)}"
            )
    s, new_state, _ = _step(current_t, te_t, state, neuron, p)
    return s, new_state


def reference_scan(
    current: torch.Tensor,  # [T, B, N]
    *,
    neuron: str,
    params: Mapping[str, Any],
    te: torch.Tensor | None = None,  # [>=T, N]
    state: NeuronState | None = None,
    traces: bool = False,
) -> ScanResult:
    """Python loop over the reference step. Inputs must already be validated by the caller
    (``scan.neuron_scan``) except params, which are resolved here."""
    p = resolve_params(neuron, params)
    st = zero_state(current) if state is None else NeuronState(*(x.detach() for x in state))
    # unbind once: slicing x[t] of an autograd tensor in the loop would make every slice's
    # backward materialise a full [T, B, N] gradient
    currents = current.unbind(0)
    tes = te[: current.shape[0]].unbind(0) if needs_te(neuron, p) else [None] * len(currents)
    spikes, us, thetas = [], [], []
    for i_t, te_t in zip(currents, tes, strict=True):
        s, st, theta = _step(i_t, te_t, st, neuron, p)
        spikes.append(s)
        if traces:
            us.append(st.u.detach())
            thetas.append(theta.detach())
    final = NeuronState(*(x.detach() for x in st))
    return ScanResult(
        torch.stack(spikes),
        final,
        torch.stack(us) if traces else None,
        torch.stack(thetas) if traces else None,
    )


# --------------------------------------------------------------------------- validation helpers


def _shape_of(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {list(x.shape)}"
    return f"{type(x).__name__}"


def _check_state(state: Any, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(state, tuple) or len(state) != 3:
        raise ValueError(f"{name} must be a NeuronState(u, s, eta) of [B, N] tensors")
    for field, x in zip(("u", "s", "eta"), state, strict=True):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            raise ValueError(
                f"{name}.{field} must be a [B, N]={list(shape)} tensor, got {_shape_of(x)}"
            )
