"""The network builder: parameter counts against the config, readouts, streaming, checkpoint
names, input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from celif_core.catalog import READOUTS, TE_MODES
from celif_core.models import ModelOutput, build_model
from celif_core.neurons import NEURON_MODULES
from celif_core.spec import SpecError, count_parameters, validate_spec

from .conftest import make_spec

NEURONS = ["lif", "alif", "plif", "celif", "lstm"]
# Every valid (neuron, architecture) pair: the LSTM is recurrent by construction and the spec
# refuses architecture="recurrent" for it (tested in test_spec.py).
NEURON_ARCHITECTURES = [
    (n, a) for n in NEURONS for a in ("feedforward", "recurrent") if (n, a) != ("lstm", "recurrent")
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("hidden", "expected"), [([64, 88, 88], 83_562), ([64, 152, 152], 153_962)]
)
def test_paper_parameter_counts(hidden, expected):
    spec = validate_spec(
        {"task": {"name": "seq_mnist"}, "model": {"neuron": "celif", "hidden": hidden}}
    )
    model = build_model(spec.network)
    assert n_params(model) == expected
    assert count_parameters(spec) == expected == spec.network.num_parameters()
    # one shared TE table [784, max(hidden)]
    assert tuple(model.te.shape) == (784, max(hidden))


@pytest.mark.parametrize(("neuron", "architecture"), NEURON_ARCHITECTURES)
@pytest.mark.parametrize("te_shared", [True, False])
def test_parameter_count_matches_spec(neuron, architecture, te_shared):
    spec = make_spec(
        "adding", seq_len=12, neuron=neuron, architecture=architecture, hidden=[8, 5, 6],
        te_shared=te_shared,
    )  # fmt: skip
    assert n_params(build_model(spec.network)) == count_parameters(spec)


@pytest.mark.parametrize(
    ("neuron", "architecture", "te_mode"),
    [(n, a, t) for n, a in NEURON_ARCHITECTURES for t in TE_MODES if t == "none" or n == "celif"],
)
@pytest.mark.parametrize("readout", READOUTS)
def test_parameter_count_equals_config(neuron, architecture, te_mode, readout):
    # the torch-free count on the config is what the builder builds, for every neuron,
    # architecture, TE mode (TE tables: CE-LIF's TE ce_modes only) and readout
    ce = {"ce_mode": "membrane_te" if te_mode != "none" else "spike"} if neuron == "celif" else {}
    spec = make_spec("adding", seq_len=9, neuron=neuron, architecture=architecture,
                     hidden=[7, 3, 5], neuron_params=ce)  # fmt: skip
    config = dataclasses.replace(
        spec.network, readout=readout, te_mode=te_mode, te_length=9 if te_mode != "none" else 0
    )
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()
    tables = model.te_by_layer()
    assert [tuple(t.shape) for _, t in tables] == [(9, n) for n in config.hidden if tables]


def test_network_config_is_frozen_and_checked():
    config = make_spec("adding", seq_len=9).network
    assert config.readout == "last" and config.te_mode == "shared" and config.te_length == 9
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden = (1,)
    with pytest.raises(TypeError):
        config.neuron_params["alpha"] = 0.1  # read-only
    with pytest.raises(ValueError, match="te_mode"):
        dataclasses.replace(config, te_mode="bogus")
    with pytest.raises(TypeError, match="NetworkConfig"):
        build_model(make_spec("adding", seq_len=9))  # the spec's .network, not the spec


def test_neurons_are_the_modules_with_the_spec_params():
    spec = make_spec("adding", seq_len=9, neuron="alif", neuron_params={"beta": 1.2})
    model = build_model(spec.network, backend="reference")
    assert all(isinstance(n, NEURON_MODULES["alif"]) for n in model.neurons)
    assert model.neurons[0].hparams == spec.model.neuron_params.model_dump()
    assert model.neurons[0].backend == "reference"


def test_plif_decay_keeps_its_checkpoint_name():
    spec = make_spec("adding", seq_len=9, neuron="plif", hidden=[4, 3])
    model = build_model(spec.network)
    keys = list(model.state_dict())
    assert [k for k in keys if "logit" in k] == ["plif_logit.0", "plif_logit.1"]
    with torch.no_grad():
        model.neurons[1].alpha_logit.fill_(0.25)
    other = build_model(spec.network)
    other.load_state_dict(model.state_dict())  # strict: the names round-trip
    assert float(other.neurons[1].alpha_logit.detach()) == 0.25
    outer = torch.nn.Module()
    outer.net = other
    assert "net.plif_logit.1" in outer.state_dict()  # under a prefix too


def test_te_by_layer():
    shared = build_model(make_spec("adding", seq_len=9, hidden=[4, 6]).network)
    assert [(n, tuple(t.shape)) for n, t in shared.te_by_layer()] == [
        ("te", (9, 4)),
        ("te", (9, 6)),
    ]
    per = build_model(make_spec("adding", seq_len=9, hidden=[4, 6], te_shared=False).network)
    assert [n for n, _ in per.te_by_layer()] == ["te_tables.0", "te_tables.1"]
    lif = build_model(make_spec("adding", seq_len=9, neuron="lif").network)
    assert lif.te_by_layer() == []


@pytest.mark.parametrize(
    ("task", "params", "shape"),
    [
        ("adding", {"seq_len": 15}, (3, 1)),
        ("copy_memory", {"delay": 4}, (3, 24, 10)),
    ],
)
@pytest.mark.parametrize("neuron", NEURONS)
def test_readout_shapes(task, params, shape, neuron):
    spec = make_spec(task, neuron=neuron, hidden=[8, 8], **params)
    model = build_model(spec.network)
    x = torch.rand(3, spec.seq_len, spec.input_size)
    assert tuple(model(x).shape) == shape


def test_classification_readout_is_mean_over_time_of_the_readout():
    spec = make_spec("adding", seq_len=10, hidden=[6])  # reuse the net, check the identity
    model = build_model(spec.network)
    x = torch.rand(2, 10, 2)
    out = model.run(x, record_spikes=True)
    spikes = out.spikes[-1]  # [B, T, N]
    per_step = model.readout(spikes)  # [B, T, 1]
    assert torch.allclose(out.output, per_step[:, -1])  # regression: the last step
    mean = build_model(dataclasses.replace(spec.network, readout="mean"))
    mean.load_state_dict(model.state_dict())
    assert torch.allclose(mean(x), per_step.mean(1), atol=1e-6)


@pytest.mark.parametrize(("neuron", "architecture"), NEURON_ARCHITECTURES)
@pytest.mark.parametrize("task", ["seq_mnist", "adding", "copy_memory"])
def test_streaming_equals_one_shot(neuron, architecture, task):
    params = {"adding": {"seq_len": 40}, "copy_memory": {"delay": 13}, "seq_mnist": {}}[task]
    spec = make_spec(task, neuron=neuron, architecture=architecture, hidden=[12, 10], **params)
    model = build_model(spec.network).eval()
    steps = spec.seq_len if task != "seq_mnist" else 100  # a shorter MNIST-like sequence
    x = torch.rand(4, steps, spec.input_size)
    with torch.no_grad():
        full = model(x)
        state = model.initial_state(4)
        outs = []
        for chunk in torch.split(x, 7, dim=1):
            out, state = model.forward_chunk(chunk, state)
            outs.append(out)
    streamed = torch.cat(outs, dim=1) if spec.kind == "sequence" else outs[-1]
    assert state.t == steps
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


def test_run_reports_firing_rates_and_spikes():
    spec = make_spec("adding", seq_len=20, hidden=[8, 6])
    model = build_model(spec.network)
    x = torch.rand(5, 20, 2)
    out = model.run(x, record_spikes=2)
    assert isinstance(out, ModelOutput)
    assert len(out.firing_rates) == 2 and all(0.0 <= r <= 1.0 for r in out.firing_rates)
    assert [tuple(s.shape) for s in out.spikes] == [(2, 20, 8), (2, 20, 6)]
    assert set(torch.unique(out.spikes[0]).tolist()) <= {0.0, 1.0}
    assert torch.isclose(out.spikes[1].mean(), torch.tensor(model.run(x[:2]).firing_rates[1]))
    assert model.run(x).spikes is None
    assert model.backend_name in ("fused", "reference")


def test_reference_and_default_backends_agree():
    spec = make_spec("copy_memory", delay=10, hidden=[8, 8])
    torch.manual_seed(1)
    fast = build_model(spec.network)
    ref = build_model(spec.network, backend="reference")
    ref.load_state_dict(fast.state_dict())
    x = torch.rand(3, spec.seq_len, 10)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    assert ref.backend_name == "reference"


def test_te_init_std_and_per_layer_tables():
    spec = make_spec(
        "adding", seq_len=300, hidden=[64, 32], te_shared=False,
        neuron_params={"te_init_std": 0.25},
    )  # fmt: skip
    model = build_model(spec.network)
    assert [tuple(t.shape) for t in model.te_tables] == [(300, 64), (300, 32)]
    assert abs(float(model.te_tables[0].detach().std()) - 0.25) < 0.02
    assert not hasattr(model, "te")


@pytest.mark.parametrize("architecture", ["feedforward", "recurrent"])
def test_previous_timing_streams_and_differs(architecture):
    # neuroseqbench's reading end to end: TE ~ N(0.01, 0.01^2), streaming in chunks equals one
    # shot (the carried state holds the pre-reset U the next chunk's first step reads), and the
    # output differs from the "current" reading with the same weights
    np_ = {"ce_timing": "previous", "te_init_mean": 0.01, "te_init_std": 0.01}
    spec = make_spec("adding", seq_len=40, architecture=architecture, hidden=[32, 24],
                     neuron_params=np_)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(spec.network).eval()
    assert abs(float(model.te.detach().mean()) - 0.01) < 0.002
    assert abs(float(model.te.detach().std()) - 0.01) < 0.002
    x = torch.rand(4, 40, spec.input_size)
    with torch.no_grad():
        full = model(x)
        state, outs = model.initial_state(4), []
        for chunk in torch.split(x, 7, dim=1):
            out, state = model.forward_chunk(chunk, state)
            outs.append(out)
        torch.testing.assert_close(outs[-1], full, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)  # the same weights under the other reading
    np_now = {**np_, "ce_timing": "current"}
    spec_now = make_spec("adding", seq_len=40, architecture=architecture, hidden=[32, 24],
                         neuron_params=np_now)  # fmt: skip
    now = build_model(spec_now.network).eval()
    assert torch.equal(now.te, model.te)
    with torch.no_grad():
        assert not torch.allclose(now(x), full)


def test_te_only_for_te_modes():
    for mode, has_te in (("membrane_te", True), ("spike", False), ("none", False), ("te", True)):
        spec = make_spec("adding", seq_len=10, neuron_params={"ce_mode": mode})
        model = build_model(spec.network)
        assert hasattr(model, "te") == has_te, mode


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "x",
    [torch.rand(4, 20), torch.rand(4, 20, 3), torch.rand(20, 2, 4, 1)],
)
def test_wrong_input_shape_names_the_expected_form(x):
    model = build_model(make_spec("adding", seq_len=20).network)
    with pytest.raises(
        ValueError,
        match=r"\[B, T, F\] with F=2.*got shape "
        + str(list(x.shape)).replace("[", r"\[").replace("]", r"\]"),
    ):
        model(x)


def test_sequence_longer_than_te_table_is_rejected():
    with pytest.raises(SpecError, match=r"model\.te_length.*784"):
        validate_spec({"task": {"name": "seq_mnist"}, "model": {"te_length": 500}})
    model = build_model(make_spec("adding", seq_len=20).network)
    with pytest.raises(ValueError, match="TE table has 20 rows"):
        model(torch.rand(2, 21, 2))
    state = model.initial_state(2)
    _, state = model.forward_chunk(torch.rand(2, 15, 2), state)
    with pytest.raises(ValueError, match="te_length=20"):
        model.forward_chunk(torch.rand(2, 6, 2), state)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"task": {"name": "imagenet"}}, "task.name"),
        ({"task": {"name": "adding"}, "model": {"neuron": "hodgkin"}}, "model.neuron"),
        (
            {"task": {"name": "adding"}, "model": {"neuron_params": {"ce_mode": "bogus"}}},
            "model.neuron_params.ce_mode",
        ),
        (
            {"task": {"name": "adding"}, "model": {"neuron_params": {"ce_timing": "next"}}},
            "model.neuron_params.ce_timing",
        ),
        ({"task": {"name": "adding", "params": {"seq_len": -5}}}, "task.params.seq_len"),
        ({"task": {"name": "adding"}, "model": {"hidden": [0]}}, "model.hidden.0"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(SpecError) as err:
        validate_spec(spec)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Model output and the bytes autograd keeps for backward (unique storages, input excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    seen.pop(x.untyped_storage().data_ptr(), None)
    return out, sum(seen.values())


@pytest.mark.parametrize("neuron", ["celif", "plif"])
def test_recompute_memory_same_result_less_saved(neuron):
    # memory="recompute" keeps only each layer's input and re-runs Linear + scan in
    # backward: same output and gradients as "store", a fraction of the saved bytes
    kw = dict(seq_len=60, hidden=[32, 32, 32], neuron=neuron)
    torch.manual_seed(2)
    network = make_spec("adding", **kw).network
    store = build_model(network, memory="store")
    recompute = build_model(network, memory="recompute")
    recompute.load_state_dict(store.state_dict())
    x = torch.rand(16, 60, 2)
    out_s, saved_s = _saved_bytes(store, x)
    out_r, saved_r = _saved_bytes(recompute, x)
    torch.testing.assert_close(out_s, out_r, rtol=0, atol=0)
    assert saved_r < 0.6 * saved_s, (saved_r, saved_s)
    out_s.sum().backward()
    out_r.sum().backward()
    for (name, a), b in zip(store.named_parameters(), recompute.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=name)
    assert recompute.backend_name == store.backend_name
