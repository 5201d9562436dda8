"""Event-driven synaptic currents (``kernels.synapses.event_linear``) against ``nn.Linear``:
values, row independence (a sequence's currents alone == in a batch, bit for bit), shapes that
are not whole vectors, non-binary inputs, the fallbacks; and a network using them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from celif_core.kernels.synapses import event_linear
from celif_core.models import build_model

from .conftest import make_spec
from .kernel_cases import require_fused_cpu


@pytest.fixture(autouse=True)
def fused_cpu():
    require_fused_cpu()  # a skip, or a failure under CELIF_REQUIRE_FUSED=1 (CI)


def spikes(rows: int, k: int, rate: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, k, generator=g) < rate).float()


@pytest.mark.parametrize(
    "k,n,rate",
    [(64, 256, 0.28), (256, 256, 0.22), (88, 88, 0.4), (256, 10, 0.3), (1, 5, 0.5), (7, 200, 0.9)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear_on_spikes(k, n, rate, bias):
    torch.manual_seed(k + n)
    layer = nn.Linear(k, n, bias=bias)
    x = spikes(300, k, rate)
    with torch.inference_mode():
        got = event_linear(layer, x)
        want = layer(x)
    assert got is not None and got.shape == (300, n) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_exact_sum_of_the_spiking_inputs_weights():
    """A spike adds its weight as is: the current is bias + the weights of the active inputs
    summed in input order, in float32, no multiply."""
    layer = nn.Linear(40, 33)
    x = spikes(5, 40, 0.3, seed=3)
    with torch.inference_mode():
        got = event_linear(layer, x)
        for m in range(5):
            want = layer.bias.clone()
            for k in torch.nonzero(x[m]).flatten().tolist():
                want = want + layer.weight[:, k]
            assert torch.equal(got[m], want)


def test_each_row_is_independent_of_the_batch():
    layer = nn.Linear(256, 256)
    x = spikes(784 * 3, 256, 0.25, seed=1)
    with torch.inference_mode():
        together = event_linear(layer, x)
        for i in range(3):
            alone = event_linear(layer, x[784 * i : 784 * (i + 1)])
            assert torch.equal(alone, together[784 * i : 784 * (i + 1)])
        assert torch.equal(event_linear(layer, x[5:6]), together[5:6])


def test_real_valued_inputs_are_multiplied():
    layer = nn.Linear(64, 48)
    x = torch.randn(50, 64)
    x[x.abs() < 0.5] = 0.0  # sparse but not 0/1
    with torch.inference_mode():
        torch.testing.assert_close(event_linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)


def test_all_zero_rows_and_empty_input():
    layer = nn.Linear(16, 20)
    with torch.inference_mode():
        zero = event_linear(layer, torch.zeros(3, 16))
        assert torch.equal(zero, layer.bias.expand(3, 20))
        assert event_linear(layer, torch.zeros(0, 16)).shape == (0, 20)


def test_weight_change_is_seen():
    """The transposed weight is cached on the layer; an in-place update must invalidate it."""
    layer = nn.Linear(8, 8)
    x = spikes(4, 8, 0.5)
    with torch.inference_mode():
        before = event_linear(layer, x)
    with torch.no_grad():
        layer.weight.add_(1.0)
    with torch.inference_mode():
        after = event_linear(layer, x)
        torch.testing.assert_close(after, layer(x))
    assert not torch.equal(before, after)


def test_not_applicable_falls_back():
    layer = nn.Linear(8, 8)
    x = spikes(4, 8, 0.5)
    assert event_linear(layer, x) is None  # gradients on: training needs the GEMM
    with torch.inference_mode():
        assert event_linear(layer, x.double()) is None
        assert event_linear(layer.double(), x.double()) is None


def test_bad_shapes_are_refused():
    from celif_core.kernels import load_cpu_extension

    ext = load_cpu_extension()
    with pytest.raises(RuntimeError, match="x must be \\[M, K\\] and wt \\[K, P\\]"):
        ext.event_linear(torch.zeros(3, 5), torch.zeros(4, 16), torch.zeros(16), 16)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        ext.event_linear(torch.zeros(3, 4), torch.zeros(4, 10), torch.zeros(10), 10)


def _network() -> nn.Module:
    """A CE-LIF network of three layers (two fed by spikes) on the adding task, T=120, F=2."""
    torch.manual_seed(0)
    return build_model(make_spec("adding", seq_len=120, hidden=[32, 96, 80]).network).eval()


def test_network_with_event_synapses_matches_dense():
    model = _network()
    x = torch.rand(4, 120, 2)
    with torch.inference_mode():
        dense = model.run(x, record_spikes=True)
        model.use_event_synapses([1, 2])
        event = model.run(x, record_spikes=True)
    assert all(hasattr(model.synapses[i], "_event_operands") for i in (1, 2))  # it ran
    assert not hasattr(model.synapses[0], "_event_operands")
    torch.testing.assert_close(event.output, dense.output, rtol=1e-4, atol=1e-4)
    # float rounding can move a membrane across the threshold only where it sits within an ulp
    for a, b in zip(event.spikes, dense.spikes, strict=True):
        assert (a != b).float().mean() < 1e-3


def test_network_batched_equals_alone_with_event_synapses():
    model = _network()
    model.use_event_synapses([1, 2])
    x = torch.rand(5, 120, 2)
    with torch.inference_mode():
        together = model.run(x, record_spikes=True)
        for i in range(5):
            alone = model.run(x[i : i + 1], record_spikes=True)
            assert torch.equal(alone.output, together.output[i : i + 1])
            for a, b in zip(alone.spikes, together.spikes, strict=True):
                assert torch.equal(a, b[i : i + 1])


def test_training_keeps_the_gemm_and_its_gradients():
    model = _network()
    model.use_event_synapses([1, 2])
    x = torch.rand(2, 120, 2)
    out = model(x)  # gradients on: the dense product, differentiable
    out.sum().backward()
    assert model.synapses[1].weight.grad is not None
    assert model.synapses[1].weight.grad.abs().sum() > 0


def test_layer_zero_cannot_be_event_driven():
    model = _network()
    with pytest.raises(ValueError, match="hidden layers fed by spikes, \\[1, 2\\]"):
        model.use_event_synapses([0])


def test_a_layer_made_under_inference_mode():
    """Inference tensors keep no version counter: the operands are keyed on storage then."""
    with torch.inference_mode():
        layer = nn.Linear(24, 40)
        x = spikes(6, 24, 0.3)
        torch.testing.assert_close(event_linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)
