"""The one network builder: feedforward / recurrent SNNs of any neuron, and an LSTM.

``build_model(config, backend=..., memory=...)`` builds ``input -> [Linear -> neuron] x
len(hidden) -> Linear readout`` (DESIGN.md section 3) from a frozen `config.NetworkConfig`
(``spec.network``), composed of the `celif_core.neurons` modules. Inside, everything is
time-major ``[T, B, N]``; ``forward`` takes batch-first ``x [B, T, F]`` at the boundary. A
feedforward layer applies its Linear to the whole sequence at once (``[T*B, N_in]``) and hands the
current to its neuron's scan; a recurrent layer adds ``W_rec S[t-1]`` inside a loop of the
neuron's ``step``.

Readouts (``config.readout``, from the task kind): "mean" (classification) = mean over time of
the readout's output (computed as the readout of the mean spike count, the same linear map);
"last" (regression) = the readout at the last step; "every" (sequence kinds) = at every step.

Streaming: ``initial_state(B)`` then ``forward_chunk(x_chunk, state)`` repeatedly; the state
carries every layer's neuron state, the time offset (TE rows) and the running spike sum of the
last layer, so the result after the last chunk equals ``model(x)`` on the whole sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from celif_core.catalog import BACKENDS, MEMORY_MODES
from celif_core.config import NetworkConfig
from celif_core.functional import NeuronState, fused_available
from celif_core.kernels.synapses import event_linear
from celif_core.neurons import NEURON_MODULES, te_table


@dataclass
class ModelOutput:
    output: torch.Tensor  # [B, out] or [B, T, out] (sequence kinds)
    firing_rates: list[float]  # mean spikes per neuron per step, one per hidden layer ([] for LSTM)
    spikes: list[torch.Tensor] | None  # per layer [B, T, N] (0/1), when recorded


@dataclass
class StreamState:
    """What `forward_chunk` carries between chunks. ``layers`` holds a `NeuronState` per spiking
    layer, or an ``(h, c)`` pair per LSTM layer; ``t`` the steps consumed so far; ``spike_sum``
    the running sum over time of the last hidden layer ([B, N_last], classification readout)."""

    layers: list[Any]
    t: int = 0
    spike_sum: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def detach(self) -> StreamState:
        def _d(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x.detach()
            if isinstance(x, tuple):
                return (
                    type(x)(*(_d(v) for v in x))
                    if hasattr(x, "_fields")
                    else tuple(_d(v) for v in x)
                )
            return x

        return StreamState(
            [_d(s) for s in self.layers],
            self.t,
            None if self.spike_sum is None else self.spike_sum.detach(),
            dict(self.extra),
        )


# BLAS rounds a product of fewer rows differently (gemv and small-M kernels): those are padded
# to this many zero rows, so a row's result never depends on how many rows it came with.
MIN_GEMM_ROWS = 4


def linear_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x [M, K]``, each row's result independent of M (see MIN_GEMM_ROWS):
    the service's dynamic batching relies on it (a sequence's answer is the same alone or in a
    batch)."""
    m = x.shape[0]
    if m >= MIN_GEMM_ROWS:
        return layer(x)
    return layer(torch.cat([x, x.new_zeros(MIN_GEMM_ROWS - m, x.shape[1])]))[:m]


class CelifNetwork(nn.Module):
    """The network a `NetworkConfig` describes, composed of the `celif_core.neurons` modules.
    Build it with :func:`build_model`.

    ``backend`` picks the neuron scan implementation (``catalog.BACKENDS``); ``memory`` what a
    training step keeps per hidden layer (``catalog.MEMORY_MODES``): ``"store"`` everything
    backward needs, ``"recompute"`` only the layer's input (the previous layer's spikes, which
    its Linear keeps anyway), re-running Linear + scan in backward (``torch.utils.checkpoint``;
    feedforward layers).

    Parameter names are those of the checkpoints: ``synapses.<l>``, ``recurrent.<l>``,
    ``plif_logit.<l>`` (the PLIF modules' ``alpha_logit``, renamed by the state-dict hooks),
    ``te`` (shared) or ``te_tables.<l>``, ``readout`` and ``lstm.<l>``.
    """

    def __init__(self, config: NetworkConfig, *, backend: str = "auto", memory: str = "store"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {list(MEMORY_MODES)}, got {memory!r}")
        self.config = config
        self.hidden = list(config.hidden)
        self.input_size = config.input_size
        self.backend = backend
        self.memory = memory
        self.backend_name: str | None = None  # which scan implementation actually ran last
        # Hidden layers (>= 1: their input is spikes) whose synaptic currents are computed
        # event-driven when no gradient is needed (``kernels.synapses``); none by default.
        # Set with ``use_event_synapses``, by inference code that measured it faster.
        self.event_synapses: frozenset[int] = frozenset()

        sizes = [config.input_size, *self.hidden]
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        if not config.spiking:
            self.lstm = nn.ModuleList(nn.LSTM(n_in, n_out) for n_in, n_out in pairs)
        else:
            self.synapses = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairs)
            if config.architecture == "recurrent":
                self.recurrent = nn.ModuleList(nn.Linear(n, n, bias=False) for n in self.hidden)
            module = NEURON_MODULES[config.neuron]
            self.neurons = nn.ModuleList(
                module(n, backend=backend, **config.neuron_params) for n in self.hidden
            )
            np_ = config.neuron_params
            init = {"te_init_mean": np_.get("te_init_mean"), "te_init_std": np_.get("te_init_std")}
            if config.te_mode == "shared":
                self.te = te_table(*config.te_shape(0), **init)
            elif config.te_mode == "per_layer":
                self.te_tables = nn.ParameterList(
                    te_table(*config.te_shape(layer), **init) for layer in range(len(self.hidden))
                )
            if config.neuron == "plif":
                self.register_state_dict_post_hook(_plif_names_out)
                self.register_load_state_dict_pre_hook(_plif_names_in)
        self.readout = nn.Linear(self.hidden[-1], config.output_size)

    # ------------------------------------------------------------------ TE tables
    def te_by_layer(self) -> list[tuple[str, torch.Tensor]]:
        """(parameter name, the ``[te_length, N_l]`` TE rows and columns it reads) per hidden
        layer; ``[]`` without TE. With a shared table every layer reads its first N_l columns."""
        mode = self.config.te_mode
        if mode == "none":
            return []
        if mode == "shared":
            return [("te", self.te[:, :n]) for n in self.hidden]
        return [(f"te_tables.{i}", table) for i, table in enumerate(self.te_tables)]

    def _te(self, layer: int, t0: int, steps: int) -> torch.Tensor | None:
        te_length = self.config.te_length
        if self.config.te_mode == "none":
            return None
        if t0 + steps > te_length:
            raise ValueError(
                f"the TE table has {te_length} rows but the sequence reaches step "
                f"{t0 + steps} (T must be <= te_length={te_length})"
            )
        n = self.hidden[layer]
        table = self.te if self.config.te_mode == "shared" else self.te_tables[layer]
        return table[t0 : t0 + steps, :n]  # [T, N_l]

    # ------------------------------------------------------------------ streaming state
    def initial_state(self, batch_size: int) -> StreamState:
        ref = self.readout.weight
        if not self.config.spiking:
            layers = [
                (ref.new_zeros(1, batch_size, n), ref.new_zeros(1, batch_size, n))
                for n in self.hidden
            ]
        else:
            layers = []
            for n in self.hidden:
                z = ref.new_zeros(batch_size, n)
                layers.append(NeuronState(z, z, z))
        return StreamState(layers, 0, ref.new_zeros(batch_size, self.hidden[-1]))

    def _check_input(self, x: Any, what: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                f"{what} must be a tensor of shape [B, T, F] with F={self.input_size}, got {type(x).__name__}"
            )
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(
                f"{what} must have shape [B, T, F] with F={self.input_size} (batch-first), "
                f"got shape {list(x.shape)}"
            )
        return x.to(dtype=self.readout.weight.dtype, device=self.readout.weight.device)

    # ------------------------------------------------------------------ core
    def _hidden_pass(
        self, x: torch.Tensor, state: StreamState, record: bool
    ) -> tuple[torch.Tensor, list[Any], list[torch.Tensor]]:
        """``x [T, B, F]`` -> last hidden layer ``[T, B, N_L]``, new per-layer states, spikes."""
        steps = x.shape[0]
        h = x
        new_states: list[Any] = []
        layer_spikes: list[torch.Tensor] = []
        if not self.config.spiking:
            for lstm, st in zip(self.lstm, state.layers, strict=True):
                h, (hn, cn) = lstm(h, st)
                new_states.append((hn, cn))
            self.backend_name = "torch"
            return h, new_states, layer_spikes
        used: set[str] = set()
        recompute = self.memory == "recompute" and torch.is_grad_enabled()
        for layer, st in enumerate(state.layers):
            te = self._te(layer, state.t, steps)
            if self.config.architecture == "recurrent":
                h, st_new = self._recurrent_layer(layer, h, te, st)
                used.add("reference")
            else:
                args = (layer, h, te, st)
                if recompute:
                    h, st_new = torch.utils.checkpoint.checkpoint(
                        self._feedforward_layer, *args, use_reentrant=False
                    )
                else:
                    h, st_new = self._feedforward_layer(*args)
                used.add(_backend_used(self.backend, h))
            new_states.append(st_new)
            if record:
                layer_spikes.append(h)
        self.backend_name = (
            "fused" if used == {"fused"} else ("reference" if used == {"reference"} else "mixed")
        )
        return h, new_states, layer_spikes

    def use_event_synapses(self, layers: Iterable[int]) -> None:
        """Compute the synaptic currents of these hidden layers event-driven (cost per input
        spike) whenever gradients are off; layer 0 (real-valued input) cannot be one."""
        chosen = frozenset(int(layer) for layer in layers)
        allowed = set(range(1, len(self.hidden))) if self.config.spiking else set()
        if not chosen <= allowed:
            raise ValueError(
                f"event-driven synapses need hidden layers fed by spikes, {sorted(allowed)}; "
                f"got {sorted(chosen)}"
            )
        self.event_synapses = chosen

    def _current(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The layer's synaptic current ``[T, B, N]``: one product over all T*B rows of ``h``
        (a GEMM, or event-driven for the layers in ``event_synapses``)."""
        steps, batch = h.shape[0], h.shape[1]
        rows = h.reshape(steps * batch, -1)
        current = None
        if layer in self.event_synapses:
            current = event_linear(self.synapses[layer], rows)  # None: needs the GEMM here
        if current is None:
            current = linear_rows(self.synapses[layer], rows)
        return current.reshape(steps, batch, self.hidden[layer])

    def _feedforward_layer(
        self, layer: int, h: torch.Tensor, te: torch.Tensor | None, st: NeuronState
    ) -> tuple[torch.Tensor, NeuronState]:
        """Linear over the whole sequence, then the neuron scan: spikes ``[T, B, N]``, state."""
        res = self.neurons[layer](self._current(layer, h), te=te, state=st)
        return res.spikes, res.state

    def _recurrent_layer(
        self, layer: int, h: torch.Tensor, te: torch.Tensor | None, state: NeuronState
    ) -> tuple[torch.Tensor, NeuronState]:
        """``I[t] = W h[t] + W_rec S[t-1]`` stepped through the neuron: spikes, state."""
        current = self._current(layer, h)  # (T, B, N)
        rec, neuron = self.recurrent[layer], self.neurons[layer]
        st = NeuronState(*(v.detach() for v in state))
        tes = te.unbind(0) if te is not None else [None] * current.shape[0]
        spikes = []
        for i_t, te_t in zip(current.unbind(0), tes, strict=True):
            s, st = neuron.step(i_t + rec(st.s), st, te_t)
            spikes.append(s)
        return torch.stack(spikes), NeuronState(*(v.detach() for v in st))

    def _readout(
        self, h: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Readout of a chunk ``h [T, B, N]`` given the state before it."""
        if self.config.readout == "mean":
            total = state.spike_sum + h.sum(0)  # (B, N)
            return linear_rows(self.readout, total / (state.t + h.shape[0])), total
        if self.config.readout == "last":
            return linear_rows(self.readout, h[-1]), None
        steps, batch = h.shape[0], h.shape[1]
        y = linear_rows(self.readout, h.reshape(steps * batch, -1)).reshape(steps, batch, -1)
        return y.transpose(0, 1), None  # (B, T, out)

    def forward_chunk(
        self, x_chunk: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed ``x_chunk [B, Tc, F]``; returns (prediction so far, new state).

        Readout "mean": the mean-over-time readout of every step seen so far; "last": the
        readout at the chunk's last step; "every": this chunk's per-step outputs
        ``[B, Tc, out]``. Gradients never flow into the carried state (truncated BPTT)."""
        x = self._check_input(x_chunk, "x_chunk")
        if len(state.layers) != len(self.hidden):
            raise ValueError(f"state has {len(state.layers)} layers, the model {len(self.hidden)}")
        state = state.detach()
        h, layers, _ = self._hidden_pass(x.transpose(0, 1), state, record=False)
        out, total = self._readout(h, state)
        new = StreamState(
            layers, state.t + x.shape[1], total if total is not None else state.spike_sum
        )
        return out, new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, F]`` -> ``[B, out]`` (readouts mean, last) or ``[B, T, out]`` (every)."""
        x = self._check_input(x)
        state = self.initial_state(x.shape[0])
        h, _, _ = self._hidden_pass(x.transpose(0, 1), state, record=False)
        return self._readout(h, state)[0]

    def run(self, x: torch.Tensor, record_spikes: bool | int = False) -> ModelOutput:
        """Forward pass plus telemetry. ``record_spikes``: False (none), True (every sequence) or
        an int k (the first k sequences of the batch); spikes come back as ``[B, T, N]`` per layer,
        detached. ``firing_rates``: mean spikes per neuron per step of each hidden layer."""
        x = self._check_input(x)
        state = self.initial_state(x.shape[0])
        need_spikes = self.config.spiking
        h, _, spikes = self._hidden_pass(x.transpose(0, 1), state, record=need_spikes)
        out, _ = self._readout(h, state)
        rates = [float(s.detach().float().mean()) for s in spikes]
        recorded = None
        if record_spikes is not False and record_spikes is not None and need_spikes:
            keep = x.shape[0] if record_spikes is True else int(record_spikes)
            recorded = [s.detach()[:, :keep].transpose(0, 1) for s in spikes]
        return ModelOutput(out, rates, recorded)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"neuron={c.neuron}, architecture={c.architecture}, hidden={self.hidden}, "
            f"readout={c.readout}, te={c.te_mode}"
        )


def _plif_keys(module: CelifNetwork, prefix: str) -> list[tuple[str, str]]:
    """(module key, checkpoint key) of each layer's PLIF decay."""
    return [
        (f"{prefix}neurons.{i}.alpha_logit", f"{prefix}plif_logit.{i}")
        for i in range(len(module.hidden))
    ]


def _plif_names_out(module: CelifNetwork, state_dict: dict, prefix: str, _meta: Any) -> None:
    """state_dict(): the PLIF decays under their checkpoint names, in place."""
    names = dict(_plif_keys(module, prefix))
    items = [(names.get(k, k), v) for k, v in state_dict.items()]
    state_dict.clear()
    state_dict.update(items)


def _plif_names_in(module: CelifNetwork, state_dict: dict, prefix: str, *_args: Any) -> None:
    """load_state_dict(): checkpoint names back to the modules' parameters."""
    for ours, theirs in _plif_keys(module, prefix):
        if theirs in state_dict:
            state_dict[ours] = state_dict.pop(theirs)


def _backend_used(requested: str, current: torch.Tensor) -> str:
    """Name of the scan implementation ``neuron_scan(current, backend=requested)`` runs."""
    if requested in ("fused", "reference"):
        return requested
    fused = current.dtype in (torch.float32, torch.float64) and fused_available(current.device)
    return "fused" if fused else "reference"


def build_model(
    config: NetworkConfig, *, backend: str = "auto", memory: str = "store"
) -> CelifNetwork:
    """The network of ``config`` (``spec.network`` for a job spec). Where and how it runs are
    build arguments, never read from a spec: ``backend`` (``catalog.BACKENDS``) and ``memory``
    (``catalog.MEMORY_MODES``), e.g. ``spec.training.backend`` and ``spec.training.memory``."""
    if not isinstance(config, NetworkConfig):
        raise TypeError(
            f"build_model takes a NetworkConfig (a job spec's `.network`), got {type(config)}"
        )
    return CelifNetwork(config, backend=backend, memory=memory)
