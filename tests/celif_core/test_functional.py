"""celif_core.functional: the reference semantics (golden trajectories, surrogate, state carry,
validation) checked on every backend, and the public function signatures."""

from __future__ import annotations

import pytest
import torch

from celif_core.functional import (
    CE_MODES,
    NeuronState,
    active_backend,
    alif,
    celif,
    celif_traces,
    fused_available,
    lif,
    neuron_scan,
    neuron_step,
    plif,
    spike_fn,
    spike_fn_primitive,
)

from .kernel_cases import require_fused_cpu

BACKENDS = ["reference", "fused"]


def _backend(name: str) -> str:
    if name == "fused":
        require_fused_cpu()  # a skip, or a failure under CELIF_REQUIRE_FUSED=1 (CI)
    return name


def _params(neuron: str, ce_mode: str = "membrane_te", **kw) -> dict:
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, beta=1.8, surrogate_width=0.5, ce_mode=ce_mode)
    if neuron == "plif":
        p["alpha"] = torch.tensor(0.5)
    p.update(kw)
    return p


# --------------------------------------------------------------------------- surrogate


def test_spike_fn_matches_primitive_twin():
    v = (torch.randn(1000, dtype=torch.float64) * 0.5).requires_grad_()
    g = torch.randn(1000, dtype=torch.float64)
    for width in (0.5, 1.0, 0.2):
        s1 = spike_fn(v, width)
        (g1,) = torch.autograd.grad((s1 * g).sum(), v)
        s2 = spike_fn_primitive(v, width)
        (g2,) = torch.autograd.grad((s2 * g).sum(), v)
        assert torch.equal(s1, s2)
        torch.testing.assert_close(g1, g2)
        expected = g * (v.detach().abs() < width / 2) / width
        torch.testing.assert_close(g1, expected)


def test_heaviside_fires_at_threshold():
    v = torch.tensor([-1e-6, 0.0, 1e-6])
    assert spike_fn(v, 0.5).tolist() == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- golden trajectories


@pytest.mark.parametrize("backend", BACKENDS)
def test_celif_golden_trajectory(backend):
    # Worked by hand from DESIGN.md s3 (alpha=0.5, rho=0.5, theta0=0.25, binary-exact values):
    # t  I     TE    U      eta        theta      v          S
    # 0  0.75  0.5   0.75   0.375      0.625      0.125      1
    # 1  0.25  -1    0.25   -0.0625    0.1875     0.0625     1   (reset, TE<0 lowers theta)
    # 2  0.25  0.25  0.25   0.03125    0.28125    -0.03125   0   (reset)
    # 3  0.25  0     0.375  0.015625   0.265625   0.109375   1
    current = torch.tensor([0.75, 0.25, 0.25, 0.25]).reshape(4, 1, 1)
    te = torch.tensor([0.5, -1.0, 0.25, 0.0]).reshape(4, 1)
    r = celif_traces(current, te, alpha=0.5, rho=0.5, theta0=0.25, surrogate_width=0.5)
    if backend == "fused":
        _backend("fused")
        p = dict(alpha=0.5, rho=0.5, theta0=0.25, surrogate_width=0.5)
        r = neuron_scan(current, neuron="celif", params=p, te=te, traces=True, backend=backend)
    assert r.spikes.flatten().tolist() == [1.0, 1.0, 0.0, 1.0]
    assert r.u.flatten().tolist() == [0.75, 0.25, 0.25, 0.375]
    assert r.theta.flatten().tolist() == [0.625, 0.1875, 0.28125, 0.265625]
    assert r.state.eta.item() == 0.015625
    assert r.state.u.item() == 0.375 and r.state.s.item() == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_celif_previous_timing_golden_trajectory(backend):
    # ce_timing "previous" (neuroseqbench's reading), worked by hand: alpha=0.5, rho=0.5,
    # theta0=0.5, eta[t] = rho*eta[t-1] + U[t-1]*TE[t] with U[t-1] BEFORE its reset, U[-1]=0:
    # t  I     TE    U      eta                          theta     v         S
    # 0  0.25  0.5   0.25   0.5*0     + 0*0.5     = 0        0.5       -0.25     0
    # 1  0.5   0.25  0.625  0.5*0     + 0.25*0.25 = 0.0625   0.5625    0.0625    1
    # 2  0.5   -0.5  0.5    0.5*0.0625 + 0.625*-0.5 = -0.28125 0.21875 0.28125   1
    # 3  0.75  0.5   0.75   0.5*-0.28125 + 0.5*0.5  = 0.109375 0.609375 0.140625 1
    # (the reset after t=1 zeroes the membrane step 2 starts from, U[2] = 0 + I[2], but eta[2]
    # reads the pre-reset 0.625; with the post-reset 0 theta[2] would be 0.53125 and S[2] = 0.
    # Under "current" the spikes are 0, 0, 1, 1.)
    current = torch.tensor([0.25, 0.5, 0.5, 0.75]).reshape(4, 1, 1)
    te = torch.tensor([0.5, 0.25, -0.5, 0.5]).reshape(4, 1)
    p = dict(alpha=0.5, rho=0.5, theta0=0.5, surrogate_width=1.0, ce_timing="previous")
    r = neuron_scan(current, neuron="celif", params=p, te=te, traces=True,
                    backend=_backend(backend))  # fmt: skip
    assert r.spikes.flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.u.flatten().tolist() == [0.25, 0.625, 0.5, 0.75]
    assert r.theta.flatten().tolist() == [0.5, 0.5625, 0.21875, 0.609375]
    assert r.state.eta.item() == 0.109375
    assert r.state.u.item() == 0.75 and r.state.s.item() == 1.0
    now = neuron_scan(current, neuron="celif", params={**p, "ce_timing": "current"}, te=te)
    assert now.spikes.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def _python_celif(current, te, mode, timing, *, alpha, rho, theta0, u0=0.0, s0=0.0, eta0=0.0):
    """DESIGN.md section 3 / the issue-9 contract on plain Python floats, one neuron: spikes and
    thetas. Written apart from the implementation, as the equations read."""
    u, s, eta, spikes, thetas = u0, s0, eta0, [], []
    for i_t, te_t in zip(current, te, strict=True):
        u_before = u  # U[t-1] as step t-1 left it: before its reset
        u = alpha * u * (1 - s) + i_t
        u_ce = u_before if timing == "previous" else u
        ce = {
            "none": 0.0,
            "spike": s,
            "membrane": u_ce,
            "te": te_t,
            "spike_te": s * te_t,
            "membrane_te": u_ce * te_t,
        }[mode]
        eta = rho * eta + ce
        theta = theta0 + eta
        s = 1.0 if u - theta >= 0 else 0.0
        spikes.append(s)
        thetas.append(theta)
    return spikes, thetas


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("timing", ["current", "previous"])
@pytest.mark.parametrize("ce_mode", CE_MODES)
def test_celif_matches_python_float_loop(backend, ce_mode, timing):
    # every ce_mode in both timings against the equations on Python floats, from a carried state
    g = torch.Generator().manual_seed(7)
    T, B, N = 12, 2, 3
    x = torch.randn(T, B, N, generator=g, dtype=torch.float64) * 0.6 + 0.25
    te = torch.randn(T, N, generator=g, dtype=torch.float64) * 0.5
    st = NeuronState(
        torch.rand(B, N, generator=g, dtype=torch.float64),
        (torch.rand(B, N, generator=g) > 0.5).double(),
        torch.rand(B, N, generator=g, dtype=torch.float64) * 0.1,
    )
    p = dict(alpha=0.5, rho=0.9, theta0=0.3, surrogate_width=1.0, ce_mode=ce_mode)
    p["ce_timing"] = timing
    r = neuron_scan(x, neuron="celif", params=p, te=te, state=st, traces=True,
                    backend=_backend(backend))  # fmt: skip
    for b in range(B):
        for n in range(N):
            spikes, thetas = _python_celif(
                x[:, b, n].tolist(), te[:, n].tolist(), ce_mode, timing,
                alpha=0.5, rho=0.9, theta0=0.3,
                u0=st.u[b, n].item(), s0=st.s[b, n].item(), eta0=st.eta[b, n].item(),
            )  # fmt: skip
            assert r.spikes[:, b, n].tolist() == spikes
            torch.testing.assert_close(r.theta[:, b, n], torch.tensor(thetas).double())


def test_celif_previous_timing_gradcheck(monkeypatch):
    # finite differences against the reference's backward through the "previous" recurrence;
    # a smooth spike stands in for the Heaviside (whose true derivative is 0 almost everywhere)
    from celif_core.functional import reference

    monkeypatch.setattr(reference, "spike_fn", lambda v, width: torch.sigmoid(v / width))
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(5, 2, 3, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    te = (torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    alpha = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    st = NeuronState(*(torch.rand(2, 3, generator=g, dtype=torch.float64) for _ in range(3)))

    for mode in ("membrane_te", "membrane", "spike_te"):

        def f(x, te, alpha, mode=mode):
            p = dict(alpha=alpha, rho=0.9, theta0=0.3, surrogate_width=0.5, ce_mode=mode)
            p["ce_timing"] = "previous"
            return neuron_scan(x, neuron="celif", params=p, te=te, state=st,
                               backend="reference").spikes  # fmt: skip

        assert torch.autograd.gradcheck(f, (x, te, alpha))


@pytest.mark.parametrize("backend", BACKENDS)
def test_alif_golden_trajectory(backend):
    # alpha=0.5, rho=0.5, beta=1, theta0=0.25, I=0.5 every step:
    # t0: U=0.5  eta=0    theta=0.25 S=1 | t1: U=0.5 (reset) eta=0.5 theta=0.75 S=0
    # t2: U=0.75 eta=0.25 theta=0.5  S=1
    current = torch.full((3, 1, 1), 0.5)
    p = dict(alpha=0.5, rho=0.5, beta=1.0, theta0=0.25, surrogate_width=0.5)
    r = neuron_scan(current, neuron="alif", params=p, traces=True, backend=_backend(backend))
    assert r.spikes.flatten().tolist() == [1.0, 0.0, 1.0]
    assert r.u.flatten().tolist() == [0.5, 0.5, 0.75]
    assert r.theta.flatten().tolist() == [0.25, 0.75, 0.5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_golden_trajectory(backend):
    # alpha=0.5, theta0=1: U = 0.6, 0.9, 1.05 (spike), 0.6 (reset)
    current = torch.tensor([0.6, 0.6, 0.6, 0.6], dtype=torch.float64).reshape(4, 1, 1)
    p = dict(alpha=0.5, theta0=1.0, surrogate_width=0.5)
    r = neuron_scan(current, neuron="lif", params=p, traces=True, backend=_backend(backend))
    assert r.spikes.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(r.u.flatten(), torch.tensor([0.6, 0.9, 1.05, 0.6]).double())


def test_lif_golden_gradient():
    # T=2, one neuron, a=0.5, alpha=0.5, theta0=0.3, I=[0.2, 0.25]:
    # U0=0.2 (v0=-0.1: S0=0, window open), U1=0.5*0.2+0.25=0.35 (v1=0.05: S1=1, window open).
    # dS1/dI1 = 1/a = 2. dS1/dI0 = 1/a * dU1/dI0, where U0 reaches U1 directly (alpha*(1-S0))
    # and through the reset (dU1/dS0 * dS0/dU0 = -alpha*U0 * 1/a): 2 * (0.5 - 0.2) = 0.6.
    a, alpha, theta0 = 0.5, 0.5, 0.3
    current = torch.tensor([0.2, 0.25], dtype=torch.float64).reshape(2, 1, 1).requires_grad_()
    s = lif(current, alpha=alpha, theta0=theta0, surrogate_width=a)
    s[1].sum().backward()
    torch.testing.assert_close(current.grad.flatten(), torch.tensor([0.6, 2.0]).double())


# --------------------------------------------------------------------------- public functions


def test_public_functions_match_neuron_scan():
    torch.manual_seed(0)
    x = torch.randn(12, 3, 5)
    te = torch.randn(12, 5) * 0.3
    base = dict(theta0=0.3, surrogate_width=0.5)
    pairs = [
        (lif(x, alpha=0.5, **base), neuron_scan(x, neuron="lif", params=dict(alpha=0.5, **base))),
        (
            alif(x, alpha=0.5, rho=0.9, beta=1.8, **base),
            neuron_scan(x, neuron="alif", params=dict(alpha=0.5, rho=0.9, beta=1.8, **base)),
        ),
        (
            plif(x, torch.tensor(0.7), **base),
            neuron_scan(x, neuron="plif", params=dict(alpha=torch.tensor(0.7), **base)),
        ),
        (
            celif(x, te, alpha=0.5, rho=0.9, **base),
            neuron_scan(x, neuron="celif", params=dict(alpha=0.5, rho=0.9, **base), te=te),
        ),
    ]
    for spikes, result in pairs:
        assert spikes.shape == (12, 3, 5)
        assert torch.equal(spikes, result.spikes)


def _record_scans(monkeypatch) -> list[str]:
    """The names of the scans ``neuron_scan`` runs from now on: fused_scan / reference_scan."""
    from celif_core.functional import scan
    from celif_core.kernels import fused

    calls: list[str] = []
    for module, name in ((fused, "fused_scan"), (scan, "reference_scan")):
        real = getattr(module, name)

        def recorded(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)
    return calls


def test_active_backend_names_the_scan_auto_runs(monkeypatch):
    # With the CPU kernel built, active_backend() says "fused-cpu" and backend="auto" runs the
    # fused scan; with it disabled, both say and run the reference. Tensors on a device no
    # kernel serves report the reference.
    require_fused_cpu()
    calls = _record_scans(monkeypatch)
    x = torch.randn(4, 2, 3)
    p = dict(alpha=0.5, theta0=0.3, surrogate_width=0.5)
    assert active_backend() == "fused-cpu"
    assert active_backend("meta") == "reference"
    fused = neuron_scan(x, neuron="lif", params=p)
    assert calls == ["fused_scan"]
    monkeypatch.setenv("CELIF_DISABLE_FUSED", "1")
    assert not fused_available() and active_backend() == "reference"
    ref = neuron_scan(x, neuron="lif", params=p)
    assert calls == ["fused_scan", "reference_scan"]
    assert torch.equal(fused.spikes, ref.spikes)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "neuron,ce_mode,ce_timing",
    [("lif", "none", "current"), ("alif", "spike", "current"), ("plif", "none", "current")]
    + [("celif", m, t) for m in CE_MODES for t in ("current", "previous")],
)
def test_state_carry_equals_one_scan(backend, neuron, ce_mode, ce_timing):
    torch.manual_seed(1)
    T, k = 16, 7
    x = torch.randn(T, 2, 6, dtype=torch.float64) * 0.6 + 0.2
    te = torch.randn(T, 6, dtype=torch.float64) * 0.3
    p = _params(neuron, ce_mode, ce_timing=ce_timing)
    kw = dict(neuron=neuron, params=p, traces=True, backend=_backend(backend))
    full = neuron_scan(x, te=te, **kw)
    first = neuron_scan(x[:k], te=te[:k], **kw)
    second = neuron_scan(x[k:], te=te[k:], state=first.state, **kw)
    assert torch.equal(torch.cat([first.spikes, second.spikes]), full.spikes)
    torch.testing.assert_close(torch.cat([first.u, second.u]), full.u)
    torch.testing.assert_close(torch.cat([first.theta, second.theta]), full.theta)
    for a, b in zip(second.state, full.state, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gradient_into_passed_state(backend):
    x = torch.randn(5, 2, 3, requires_grad=True)
    te = torch.randn(5, 3) * 0.3
    st = NeuronState(*(torch.rand(2, 3, requires_grad=True) for _ in range(3)))
    p = _params("celif")
    r = neuron_scan(x, neuron="celif", params=p, te=te, state=st, backend=_backend(backend))
    r.spikes.sum().backward()
    assert x.grad is not None
    assert all(t.grad is None for t in st)
    assert all(not t.requires_grad for t in r.state)


@pytest.mark.parametrize("backend", BACKENDS)
def test_traces_shapes_and_off_by_default(backend):
    x = torch.randn(6, 2, 4)
    te = torch.randn(8, 4) * 0.3  # longer than T: its first T rows are used
    kw = dict(neuron="celif", params=_params("celif"), te=te, backend=_backend(backend))
    off = neuron_scan(x, **kw)
    assert off.u is None and off.theta is None
    on = neuron_scan(x, traces=True, **kw)
    assert on.u.shape == on.theta.shape == (6, 2, 4)
    assert torch.equal(on.spikes, (on.u >= on.theta).float())
    assert torch.equal(off.spikes, on.spikes)


def test_neuron_step_is_differentiable_and_matches_scan():
    torch.manual_seed(2)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    te = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    p = _params("celif")
    st = NeuronState(*(torch.zeros(2, 3, dtype=torch.float64) for _ in range(3)))
    spikes = []
    for t in range(5):
        s, st = neuron_step(x[t], neuron="celif", params=p, te_t=te[t], state=st)
        spikes.append(s)
    spikes = torch.stack(spikes)
    ref = neuron_scan(x, neuron="celif", params=p, te=te, backend="reference").spikes
    assert torch.equal(spikes, ref)
    g1 = torch.autograd.grad(spikes.sum(), [x, te])
    g2 = torch.autograd.grad(ref.sum(), [x, te])
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b)


def test_detach_reset_changes_only_gradients():
    torch.manual_seed(3)
    x = torch.randn(10, 2, 4, requires_grad=True)
    a = lif(x, alpha=0.9, theta0=0.3, surrogate_width=1.0)
    b = lif(x, alpha=0.9, theta0=0.3, surrogate_width=1.0, detach_reset=True)
    assert torch.equal(a, b)
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert not torch.allclose(ga, gb)


# --------------------------------------------------------------------------- validation


def test_bad_inputs_raise_value_errors_naming_the_argument():
    x = torch.randn(4, 2, 3)
    te = torch.randn(4, 3)
    p = _params("celif")
    cases = [
        (dict(current=torch.randn(4, 3), neuron="celif", params=p, te=te), "current"),
        (dict(current=x.long(), neuron="celif", params=p, te=te), "current"),
        (dict(current=x[:0], neuron="lif", params=p), "current"),
        (dict(current=x, neuron="gru", params=p), "neuron"),
        (dict(current=x, neuron="celif", params={**p, "ce_mode": "bogus"}, te=te), "ce_mode"),
        (dict(current=x, neuron="celif", params={**p, "ce_timing": "next"}, te=te), "ce_timing"),
        (dict(current=x, neuron="celif", params=p, te=None), "te"),
        (dict(current=x, neuron="celif", params=p, te=torch.randn(3, 3)), "te"),
        (dict(current=x, neuron="celif", params=p, te=torch.randn(4, 5)), "te"),
        (dict(current=x, neuron="celif", params=p, te=te, backend="gpu"), "backend"),
        (dict(current=x, neuron="celif", params=p, te=te, memory="tiny"), "memory"),
        (dict(current=x, neuron="alif", params=dict(alpha=0.5)), "missing"),
        (dict(current=x, neuron="lif", params={**p, "surrogate_width": 0.0}), "surrogate_width"),
        (dict(current=x, neuron="lif", params={**p, "theta0": "high"}), "theta0"),
        (dict(current=x, neuron="plif", params={**p, "alpha": torch.rand(5)}), "alpha"),
        (
            dict(current=x, neuron="lif", params=p, state=NeuronState(*[torch.zeros(2, 4)] * 3)),
            "state",
        ),
    ]
    for kwargs, word in cases:
        current = kwargs.pop("current")
        with pytest.raises(ValueError, match=word):
            neuron_scan(current, **kwargs)


def test_neuron_step_validation():
    st = NeuronState(*[torch.zeros(2, 3)] * 3)
    with pytest.raises(ValueError, match="current_t"):
        neuron_step(torch.zeros(3), neuron="lif", params=_params("lif"), state=st)
    with pytest.raises(ValueError, match="te_t"):
        neuron_step(torch.zeros(2, 3), neuron="celif", params=_params("celif"), state=st)


def test_te_not_needed_for_non_te_modes():
    x = torch.randn(4, 2, 3)
    for mode in ("none", "spike", "membrane"):
        r = neuron_scan(x, neuron="celif", params=_params("celif", mode))
        assert r.spikes.shape == x.shape
