"""Fused neuron scan for CUDA tensors, written in Triton: the same recurrence, saved tensors and
reverse loop as the CPU kernel (``scan_cpu.cpp``), with the same ``forward``/``backward``
signatures, so ``fused.FusedScan`` drives either one.

Layout: every ``[T, B, N]`` tensor is contiguous and time-major, so one timestep is one
contiguous slab of ``B * N`` elements. Each program owns ``BLOCK`` consecutive elements of that
slab (``b * N + n``) and runs all ``T`` steps for them, keeping the state in registers; at each
step it reads and writes one coalesced ``BLOCK`` of every tensor. Neurons are independent, so
there is no synchronisation between programs.

Reductions over the batch (the ``TE`` gradient, per ``[t, n]``; the per-neuron ``alpha``
gradient) are written per element and summed by PyTorch afterwards: deterministic, no atomics,
at the cost of one temporary ``[T, B, N]`` buffer during a TE mode's backward.

Rounding: kernels are launched with ``enable_fp_fusion=False`` (no fused multiply-add) and the
coefficients are read from a tensor of the data's dtype, so every operation rounds like the
PyTorch reference and spikes match it exactly, as on CPU.

Verification without a GPU: under ``TRITON_INTERPRET=1`` (set before this module is imported)
Triton's interpreter runs these kernels on CPU tensors; the test suite checks them against the
reference that way. (Besides this module's own helper, only Triton builtins are used, not
``@triton.jit`` library functions such as ``tl.zeros``: those are decorated when ``triton`` is
imported, so after a re-import of this module under the interpreter they would still be
compiled-mode functions.) ``backend="triton"`` in ``neuron_scan`` selects this path explicitly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from celif_core.kernels import TE_MODE_IDS

# Must match CE_MODE_IDS in celif_core/kernels/__init__.py (constexpr: kernels may only read
# global constants).
NONE, SPIKE, MEMBRANE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
TE, SPIKE_TE, MEMBRANE_TE = tl.constexpr(3), tl.constexpr(4), tl.constexpr(5)
# ce_timing "previous": the membrane modes read U[t-1] before its reset
MEMBRANE_PREV, MEMBRANE_TE_PREV = tl.constexpr(6), tl.constexpr(7)

BLOCK = 128  # elements of the [B, N] slab per program
NUM_WARPS = 4

# Index of each coefficient in the small tensor the kernels read them from.
_RHO, _GAIN, _SCALE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
_THETA0, _HALF_WIDTH, _INV_WIDTH = tl.constexpr(3), tl.constexpr(4), tl.constexpr(5)


# Triton decides at decoration time (import of this module) whether kernels are compiled or
# interpreted; record that decision with the same knob it reads.
INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _program_slab(alpha_ptr, coef_ptr, BN, N, BLOCK: tl.constexpr):
    """This program's elements of the [B*N] slab, their mask and neuron index, the recurrence
    coefficients (rho, gain, scale) and each element's alpha."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BN
    n = offs % N
    alpha = tl.load(alpha_ptr + n, mask=mask, other=0.0)
    rho = tl.load(coef_ptr + _RHO)
    gain = tl.load(coef_ptr + _GAIN)
    scale = tl.load(coef_ptr + _SCALE)
    return offs, mask, n, alpha, rho, gain, scale


@triton.jit
def _forward_kernel(
    cur_ptr, te_ptr, alpha_ptr, coef_ptr,  # [T, B*N], [T, N], [N], [6]
    u0_ptr, s0_ptr, eta0_ptr,  # [B*N]
    spikes_ptr, u_ptr, code_ptr, theta_ptr,  # [T, B*N] (u, code, theta only if asked)
    uT_ptr, sT_ptr, etaT_ptr,  # [B*N]
    T, BN, N,
    MODE: tl.constexpr, USES_TE: tl.constexpr, SAVE: tl.constexpr, THETA: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs, mask, n, alpha, rho, gain, scale = _program_slab(alpha_ptr, coef_ptr, BN, N, BLOCK)
    theta0 = tl.load(coef_ptr + _THETA0)
    half = tl.load(coef_ptr + _HALF_WIDTH)
    u = tl.load(u0_ptr + offs, mask=mask, other=0.0)
    s = tl.load(s0_ptr + offs, mask=mask, other=0.0)
    eta = tl.load(eta0_ptr + offs, mask=mask, other=0.0)
    # step t+1's loads are issued during step t, so their latency overlaps a step of work
    i_next = tl.load(cur_ptr + offs, mask=mask, other=0.0)
    if USES_TE:
        te_next = tl.load(te_ptr + n, mask=mask, other=0.0)
    for t in range(T):
        at = t * BN + offs  # int32 is enough: a [T, B, N] tensor over 2**31 elements is refused
        more = mask & (at + BN < T * BN)  # i.e. t + 1 < T, as an element-wise mask
        i_t = i_next
        i_next = tl.load(cur_ptr + at + BN, mask=more, other=0.0)
        u_prev = u  # U[t-1] before its reset, the CE of the "previous" membrane modes
        u = alpha * u * (1.0 - s) + i_t
        # the contextual embedding CE[t] of each mode (DESIGN.md section 3)
        if MODE == NONE:
            eta = rho * eta
        elif MODE == SPIKE:
            eta = rho * eta + gain * s
        elif MODE == MEMBRANE:
            eta = rho * eta + gain * u
        elif MODE == MEMBRANE_PREV:
            eta = rho * eta + gain * u_prev
        else:
            te_t = te_next
            te_next = tl.load(te_ptr + (t + 1) * N + n, mask=more, other=0.0)
            if MODE == TE:
                eta = rho * eta + gain * te_t
            elif MODE == SPIKE_TE:
                eta = rho * eta + gain * (s * te_t)
            elif MODE == MEMBRANE_TE:  # the CE-LIF embedding U[t] * TE[t]
                eta = rho * eta + gain * (u * te_t)
            else:  # MEMBRANE_TE_PREV: U[t-1] * TE[t]
                eta = rho * eta + gain * (u_prev * te_t)
        theta = theta0 + scale * eta
        v = u - theta
        s = tl.where(v >= 0.0, 1.0, 0.0).to(u.dtype)
        tl.store(spikes_ptr + at, s, mask=mask)
        if SAVE:  # what backward needs: U, and S + surrogate window packed in one byte
            tl.store(u_ptr + at, u, mask=mask)
            code = (v >= 0.0).to(tl.uint8) | ((tl.abs(v) < half).to(tl.uint8) << 1)
            tl.store(code_ptr + at, code, mask=mask)
        if THETA:
            tl.store(theta_ptr + at, theta, mask=mask)
    tl.store(uT_ptr + offs, u, mask=mask)
    tl.store(sT_ptr + offs, s, mask=mask)
    tl.store(etaT_ptr + offs, eta, mask=mask)


@triton.jit
def _backward_kernel(
    gs_ptr, u_ptr, code_ptr, te_ptr, alpha_ptr, coef_ptr,  # [T, B*N] x3, [T, N], [N], [6]
    u0_ptr, s0_ptr,  # [B*N]
    gcur_ptr,  # [T, B*N] out: dL/dI
    gte_ptr,  # [T, B*N] out: per-element dL/dTE terms (NEED_TE)
    galpha_ptr,  # [B*N] out: per-element dL/dalpha sums over t (NEED_ALPHA)
    T, BN, N,
    MODE: tl.constexpr, USES_TE: tl.constexpr, DETACH_RESET: tl.constexpr,
    NEED_TE: tl.constexpr, NEED_ALPHA: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs, mask, n, alpha, rho, gain, scale = _program_slab(alpha_ptr, coef_ptr, BN, N, BLOCK)
    inv_w = tl.load(coef_ptr + _INV_WIDTH)
    # reverse-mode carries from step t+1: dL/dU[t+1], dL/deta[t+1], and what step t+1 sends to
    # S[t] (through the reset and, in spike modes, through eta)
    g_u = tl.full([BLOCK], 0.0, alpha.dtype)
    g_eta = tl.full([BLOCK], 0.0, alpha.dtype)
    g_s_next = tl.full([BLOCK], 0.0, alpha.dtype)
    g_alpha = tl.full([BLOCK], 0.0, alpha.dtype)
    u_init = tl.load(u0_ptr + offs, mask=mask, other=0.0)  # U[-1], S[-1]: the initial state
    s_init = tl.load(s0_ptr + offs, mask=mask, other=0.0)
    # U[t] and the code byte of step t are carried down from the previous iteration, and step
    # t-1's dL/dS is loaded one iteration early, so each load's latency overlaps a step of work
    last = (T - 1) * BN + offs
    u_t = tl.load(u_ptr + last, mask=mask, other=0.0)
    code_t = tl.load(code_ptr + last, mask=mask, other=0)
    gs_next = tl.load(gs_ptr + last, mask=mask, other=0.0)
    if USES_TE:
        te_next = tl.load(te_ptr + (T - 1) * N + n, mask=mask, other=0.0)
    if MODE == MEMBRANE_TE_PREV:
        te_after = tl.full([BLOCK], 0.0, alpha.dtype)  # TE[t+1]; unused at t = T-1
    for i in range(T):
        t = T - 1 - i
        at = t * BN + offs
        first = at < BN  # i.e. t == 0, as an element-wise mask
        has_prev = mask & (at >= BN)
        gs_t = gs_next
        gs_next = tl.load(gs_ptr + at - BN, mask=has_prev, other=0.0)
        if USES_TE:
            te_t = te_next
            te_next = tl.load(te_ptr + (t - 1) * N + n, mask=has_prev, other=0.0)
        # U[t-1] and S[t-1] (the initial state at t = 0); no branch, so nothing stalls the loads
        u_prev = tl.load(u_ptr + at - BN, mask=has_prev, other=0.0)
        code_prev = tl.load(code_ptr + at - BN, mask=has_prev, other=0)
        u_prev = tl.where(first, u_init, u_prev)
        s_prev = tl.where(first, s_init, (code_prev & 1).to(u_t.dtype))
        s_t = (code_t & 1).to(u_t.dtype)
        window = ((code_t >> 1) & 1).to(u_t.dtype)
        g_v = (gs_t + g_s_next) * window * inv_w
        g_eta_after = g_eta  # dL/deta[t+1]
        g_eta = rho * g_eta - scale * g_v  # dL/deta[t]
        g_u = g_v + g_u * alpha * (1.0 - s_t)  # dL/dU[t] so far
        if MODE == MEMBRANE:
            g_u = g_u + gain * g_eta
        if MODE == MEMBRANE_TE:
            g_u = g_u + gain * g_eta * te_t
        if MODE == MEMBRANE_PREV:  # eta[t+1] read U[t]
            g_u = g_u + gain * g_eta_after
        if MODE == MEMBRANE_TE_PREV:
            g_u = g_u + gain * g_eta_after * te_after
            te_after = te_t
        tl.store(gcur_ptr + at, g_u, mask=mask)
        # what step t sends to S[t-1]: the reset path, then the spike-driven eta input
        if DETACH_RESET:
            g_s_next = tl.full([BLOCK], 0.0, alpha.dtype)
        else:
            g_s_next = -alpha * u_prev * g_u
        if MODE == SPIKE:
            g_s_next = g_s_next + gain * g_eta
        if MODE == SPIKE_TE:
            g_s_next = g_s_next + gain * g_eta * te_t
        if NEED_TE:
            if MODE == TE:
                tl.store(gte_ptr + at, gain * g_eta, mask=mask)
            if MODE == SPIKE_TE:
                tl.store(gte_ptr + at, gain * g_eta * s_prev, mask=mask)
            if MODE == MEMBRANE_TE:
                tl.store(gte_ptr + at, gain * g_eta * u_t, mask=mask)
            if MODE == MEMBRANE_TE_PREV:
                tl.store(gte_ptr + at, gain * g_eta * u_prev, mask=mask)
        if NEED_ALPHA:  # dL/dalpha = sum_t dL/dU[t] * U[t-1] * (1 - S[t-1])
            g_alpha = g_alpha + g_u * u_prev * (1.0 - s_prev)
        u_t = u_prev
        code_t = code_prev
    if NEED_ALPHA:
        tl.store(galpha_ptr + offs, g_alpha, mask=mask)


def _coefficients(like: torch.Tensor, rho, gain, scale, theta0, width) -> torch.Tensor:
    # in the data's dtype so float64 runs get float64 coefficients (Triton would make Python
    # floats float32); the reference rounds width/2 and 1/width the same way
    vals = [rho, gain, scale, theta0, width / 2, 1.0 / width]
    return torch.tensor(vals, dtype=like.dtype, device=like.device)


def _check(current: torch.Tensor) -> None:
    if current.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            "the Triton scan runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), "
            f"got a {current.device.type} tensor"
        )
    if current.numel() >= 2**31:
        raise ValueError(
            f"the Triton scan indexes with int32: [T, B, N]={list(current.shape)} is too large; "
            "use training.bptt_chunk or a smaller batch"
        )


def _grid(bn: int) -> tuple[int]:
    return (triton.cdiv(bn, BLOCK),)


_LAUNCH = dict(BLOCK=BLOCK, num_warps=NUM_WARPS, enable_fp_fusion=False)


def forward(current, te, alpha, u0, s0, eta0, mode, rho, gain, scale, theta0, width, save,
            want_theta):  # fmt: skip
    """Same contract as the CPU extension's ``forward``: returns
    (spikes, u, code, theta, uT, sT, etaT); u/code/theta are empty unless requested."""
    _check(current)
    T, B, N = current.shape
    spikes = torch.empty_like(current)
    empty = current.new_empty(0)
    u = torch.empty_like(current) if save else empty
    code = torch.empty(current.shape, dtype=torch.uint8, device=current.device) if save else None
    theta = torch.empty_like(current) if want_theta else empty
    uT, sT, etaT = (torch.empty_like(u0) for _ in range(3))
    coef = _coefficients(current, rho, gain, scale, theta0, width)
    te_arg = te if mode in TE_MODE_IDS else current  # never read unless the mode uses TE
    _forward_kernel[_grid(B * N)](
        current, te_arg, alpha, coef, u0, s0, eta0,
        spikes, u if save else current, code if save else current, theta if want_theta else current,
        uT, sT, etaT, T, B * N, N,
        MODE=mode, USES_TE=mode in TE_MODE_IDS, SAVE=save, THETA=want_theta, **_LAUNCH,
    )  # fmt: skip
    return spikes, u, code if save else empty, theta, uT, sT, etaT


def backward(grad_spikes, u, code, te, alpha, u0, s0, mode, rho, gain, scale, width,
             detach_reset, need_te, need_alpha):  # fmt: skip
    """Same contract as the CPU extension's ``backward``: returns
    (grad_current, grad_te [T, N] or empty, grad_alpha [N] or empty)."""
    T, B, N = u.shape
    gs = grad_spikes.contiguous()
    te_grad = need_te and mode in TE_MODE_IDS
    grad_cur = torch.empty_like(u)
    gte = torch.empty_like(u) if te_grad else None
    galpha = torch.empty_like(u0) if need_alpha else None
    coef = _coefficients(u, rho, gain, scale, 0.0, width)
    _backward_kernel[_grid(B * N)](
        gs, u, code, te if mode in TE_MODE_IDS else u, alpha, coef, u0, s0,
        grad_cur, gte if te_grad else u, galpha if need_alpha else u,
        T, B * N, N,
        MODE=mode, USES_TE=mode in TE_MODE_IDS, DETACH_RESET=detach_reset, NEED_TE=te_grad,
        NEED_ALPHA=need_alpha,
        **_LAUNCH,
    )  # fmt: skip
    empty = u.new_empty(0)
    return (
        grad_cur,
        gte.sum(1) if te_grad else empty,  # [T, B, N] -> [T, N]
        galpha.sum(0) if need_alpha else empty,  # [B, N] -> [N]
    )
