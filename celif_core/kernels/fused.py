"""Autograd wrapper around the compiled scans: forward and backward each run the whole time loop
in compiled code, C++ on CPU (``scan_cpu.cpp``) or Triton on CUDA (``scan_triton.py``); both
expose the same ``forward``/``backward``. Python only prepares contiguous inputs and reduces
``alpha``'s grad.

Memory modes (what is kept between forward and backward, per element of [T, B, N]):
    "store"      U (one scalar) + a uint8 packing S[t] and the surrogate window: 5 bytes in f32.
    "recompute"  nothing new: the input current is kept and the forward re-run inside backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from celif_core.kernels import kernel_mode_id, load_cpu_extension, load_triton


class KernelConfig(NamedTuple):
    mode: int  # kernel_mode_id(ce_mode, ce_timing)
    rho: float
    gain: float
    scale: float
    theta0: float
    width: float
    detach_reset: bool
    memory: str
    traces: bool
    impl: str  # which compiled kernel runs the scan: "cpu" (C++) or "triton"


def _kernel(cfg: KernelConfig) -> Any:
    """The module whose ``forward``/``backward`` run this config's scan."""
    return load_triton() if cfg.impl == "triton" else load_cpu_extension()


def make_config(
    p: dict[str, Any],
    coefs: tuple[float, float, float],
    *,
    memory: str,
    traces: bool,
    impl: str = "cpu",
) -> KernelConfig:
    rho, gain, scale = coefs
    return KernelConfig(
        kernel_mode_id(p["ce_mode"], p["ce_timing"]),
        rho,
        gain,
        scale,
        p["theta0"],
        p["surrogate_width"],
        p["detach_reset"],
        memory,
        traces,
        impl,
    )


class FusedScan(torch.autograd.Function):
    """(current, te, alpha, u0, s0, eta0) -> (spikes, uT, sT, etaT, u_trace, theta_trace).

    Only ``spikes`` is differentiable; gradients go to current, te and alpha (never the state).
    ``te`` is [T, N] (or an empty tensor when the mode does not read it); ``alpha`` a scalar
    tensor or [N].
    """

    @staticmethod
    def forward(ctx, current, te, alpha, u0, s0, eta0, cfg: KernelConfig):
        ext = _kernel(cfg)
        N = current.shape[2]
        alpha_vec = alpha.detach().expand(N).contiguous()  # [N]
        needs_grad = any(ctx.needs_input_grad[:3])
        save = cfg.traces or (needs_grad and cfg.memory == "store")
        spikes, u, code, theta, uT, sT, etaT = ext.forward(
            current, te, alpha_vec, u0, s0, eta0,
            cfg.mode, cfg.rho, cfg.gain, cfg.scale, cfg.theta0, cfg.width,
            save, cfg.traces,
        )  # fmt: skip
        ctx.cfg = cfg
        ctx.alpha_shape = alpha.shape
        if needs_grad and cfg.memory == "store":
            ctx.save_for_backward(u, code, te, alpha_vec, u0, s0)
        elif needs_grad:  # recompute: keep the input, rebuild U and the bits in backward
            ctx.save_for_backward(current, te, alpha_vec, u0, s0, eta0)
        u_tr = u if cfg.traces else current.new_empty(0)
        th_tr = theta if cfg.traces else current.new_empty(0)
        ctx.mark_non_differentiable(uT, sT, etaT, u_tr, th_tr)
        return spikes, uT, sT, etaT, u_tr, th_tr

    @staticmethod
    def backward(ctx, grad_spikes, *_unused):
        cfg: KernelConfig = ctx.cfg
        ext = _kernel(cfg)
        if cfg.memory == "store":
            u, code, te, alpha_vec, u0, s0 = ctx.saved_tensors
        else:
            current, te, alpha_vec, u0, s0, eta0 = ctx.saved_tensors
            _, u, code, *_ = ext.forward(
                current, te, alpha_vec, u0, s0, eta0,
                cfg.mode, cfg.rho, cfg.gain, cfg.scale, cfg.theta0, cfg.width, True, False,
            )  # fmt: skip
        need_te = ctx.needs_input_grad[1]
        need_alpha = ctx.needs_input_grad[2]
        grad_cur, grad_te, grad_alpha = ext.backward(
            grad_spikes, u, code, te, alpha_vec, u0, s0,
            cfg.mode, cfg.rho, cfg.gain, cfg.scale, cfg.width, cfg.detach_reset,
            need_te, need_alpha,
        )  # fmt: skip
        if need_alpha and tuple(ctx.alpha_shape) != tuple(grad_alpha.shape):
            grad_alpha = grad_alpha.sum().reshape(ctx.alpha_shape)  # scalar alpha
        return (
            grad_cur if ctx.needs_input_grad[0] else None,
            grad_te if need_te else None,
            grad_alpha if need_alpha else None,
            None,
            None,
            None,
            None,
        )


def fused_scan(
    current: torch.Tensor,  # [T, B, N]
    te: torch.Tensor | None,  # [T, N] or None
    alpha: torch.Tensor,  # scalar tensor or [N]
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],  # detached [B, N] each
    cfg: KernelConfig,
):
    """Run the fused scan; returns (spikes, (uT, sT, etaT), u_trace|None, theta_trace|None)."""
    current = current.contiguous()
    te_in = te.contiguous() if te is not None else current.new_empty(0)
    u0, s0, eta0 = (x.to(current.dtype).contiguous() for x in state)
    spikes, uT, sT, etaT, u_tr, th_tr = FusedScan.apply(current, te_in, alpha, u0, s0, eta0, cfg)
    return (
        spikes,
        (uT, sT, etaT),
        u_tr if cfg.traces else None,
        th_tr if cfg.traces else None,
    )
