"""celif_core.neurons: thin modules over the functional scan, the ones the networks use."""

from __future__ import annotations

import io

import pytest
import torch

from celif_core.catalog import SPIKING_NEURONS
from celif_core.functional import NeuronState, neuron_scan, neuron_step
from celif_core.neurons import ALIF, CELIF, LIF, NEURON_MODULES, PLIF
from celif_core.spec import NEURONS


def _x(T=10, B=3, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, N, generator=g) * 0.6 + 0.25


def test_one_module_per_spiking_neuron():
    assert tuple(NEURON_MODULES) == SPIKING_NEURONS


@pytest.mark.parametrize("name", sorted(NEURON_MODULES))
def test_module_forward_matches_functional(name):
    x = _x()
    te = torch.randn(10, 6) * 0.3
    mod = NEURON_MODULES[name](6)
    r = mod(x, te=te, traces=True)
    assert r.spikes.shape == r.u.shape == x.shape
    p = mod.scan_params()
    ref = neuron_scan(x, neuron=name, params=p, te=te, backend="reference")
    assert torch.equal(r.spikes, ref.spikes)


@pytest.mark.parametrize("name", sorted(NEURON_MODULES))
def test_defaults_are_the_specs(name):
    # one default per parameter: the spec's parameter model (surrogate_width 1.0, ...)
    assert NEURON_MODULES[name]().hparams == NEURONS[name].params().model_dump()
    assert NEURON_MODULES[name]().hparams["surrogate_width"] == 1.0


@pytest.mark.parametrize("name", sorted(NEURON_MODULES))
def test_step_matches_functional_step(name):
    mod = NEURON_MODULES[name](6)
    x, te = _x(T=1)[0], torch.randn(6) * 0.3
    z = torch.zeros(3, 6)
    st = NeuronState(z, z, z)
    s, new = mod.step(x, st, te)
    s_ref, new_ref = neuron_step(x, neuron=name, params=mod.scan_params(), te_t=te, state=st)
    assert torch.equal(s, s_ref) and all(
        torch.equal(a, b) for a, b in zip(new, new_ref, strict=True)
    )


def test_modules_hold_no_hidden_state():
    mod = CELIF(6, te_steps=10)
    x = _x()
    a = mod(x).spikes
    b = mod(x).spikes
    assert torch.equal(a, b)
    half = mod(x[:4])
    rest = mod(x[4:], te=mod.te[4:], state=half.state)
    assert torch.equal(torch.cat([half.spikes, rest.spikes]), a)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LIF(6, alpha=0.7, theta0=0.2),
        lambda: ALIF(6, rho=0.95, beta=1.5),
        lambda: PLIF(6, alpha=0.8, per_neuron=True),
        lambda: CELIF(6, ce_mode="spike_te", te_steps=12, rho=0.9),
    ],
)
def test_state_dict_round_trip(make):
    torch.manual_seed(0)
    src = make()
    if isinstance(src, PLIF):
        with torch.no_grad():
            src.alpha_logit.add_(torch.linspace(-1, 1, 6))  # as if trained
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = make()
    dst.load_state_dict(torch.load(buf, weights_only=True))
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), dst.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = _x(T=12)
    te = torch.randn(12, 6) * 0.3
    assert torch.equal(src(x, te=te).spikes, dst(x, te=te).spikes)


def test_hyperparameters_and_parameters():
    # fixed hyperparameters are plain attributes (the config), only learnt ones are state
    lif = LIF(4, alpha=0.7)
    assert lif.hparams["alpha"] == 0.7 and list(lif.state_dict()) == []
    assert list(lif.parameters()) == []
    alif = ALIF(4)
    assert {"rho", "beta"} <= set(alif.hparams)
    plif = PLIF(4, alpha=0.5)
    assert [n for n, _ in plif.named_parameters()] == ["alpha_logit"]
    assert plif.alpha.item() == pytest.approx(0.5)
    celif = CELIF(4, te_steps=7)
    assert celif.te.shape == (7, 4)
    assert CELIF(4).te is None


def test_plif_learns_its_decay():
    plif = PLIF(6, per_neuron=True)
    plif(_x()).spikes.sum().backward()
    assert plif.alpha_logit.grad is not None and plif.alpha_logit.grad.shape == (6,)
    assert plif.alpha_logit.grad.abs().sum() > 0


def test_celif_previous_timing_and_te_init_mean():
    torch.manual_seed(0)
    mod = CELIF(6, te_steps=400, ce_timing="previous", te_init_mean=0.5, te_init_std=0.01)
    assert abs(float(mod.te.detach().mean()) - 0.5) < 0.01
    assert "ce_timing='previous'" in repr(mod)
    x, te = _x(), torch.randn(10, 6) * 0.3
    p = mod.scan_params()
    assert p["ce_timing"] == "previous"
    ref = neuron_scan(x, neuron="celif", params=p, te=te, backend="reference")
    assert torch.equal(mod(x, te=te).spikes, ref.spikes)


def test_celif_te_gradient_through_module():
    mod = CELIF(6, te_steps=10)
    mod(_x()).spikes.sum().backward()
    assert mod.te.grad is not None and mod.te.grad.abs().sum() > 0


def test_module_validation():
    with pytest.raises(ValueError, match="ce_mode"):
        CELIF(4, ce_mode="foo")
    with pytest.raises(ValueError, match="ce_timing"):
        CELIF(4, ce_timing="foo")
    with pytest.raises(ValueError, match="size"):
        LIF(0)
    with pytest.raises(ValueError, match="surrogate_width"):
        LIF(4, surrogate_width=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        PLIF(4, alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        LIF(4, beta=1.0)  # not a LIF parameter
    with pytest.raises(ValueError, match="memory"):
        LIF(4, memory="save")
    with pytest.raises(ValueError, match="current"):
        LIF(4)(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="te"):
        CELIF(4)(torch.randn(3, 2, 4))  # no table given and none owned


def test_module_to_float64():
    mod = CELIF(6, te_steps=10).double()
    r = mod(_x().double())
    assert r.spikes.dtype == torch.float64
