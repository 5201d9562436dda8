"""Networks built from a job spec: feedforward / recurrent SNNs of any neuron, and an LSTM.

``input -> [Linear -> neuron] x len(hidden) -> Linear readout`` (DESIGN.md section 3). Inside,
everything is time-major ``[T, B, N]``; ``forward`` takes batch-first ``x [B, T, F]`` at the
boundary. A feedforward layer applies its Linear to the whole sequence at once (``[T*B, N_in]``)
and hands the current to one neuron scan; a recurrent layer adds ``W_rec S[t-1]`` inside a loop of
``neuron_step``.

Readouts by task kind: classification = mean over time of the readout's output (computed as the
readout of the mean spike count, which is the same linear map); regression = the readout at the
last step; sequence (and sequence_regression) = the readout at every step.

Streaming: ``initial_state(B)`` then ``forward_chunk(x_chunk, state)`` repeatedly; the state
carries every layer's neuron state, the time offset (TE rows) and the running spike sum of the
last layer, so the result after the last chunk equals ``model(x)`` on the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from celif_core.functional import NeuronState, fused_available, neuron_scan, neuron_step
from celif_core.spec import JobSpec, validate_spec

SPIKING = ("lif", "alif", "plif", "celif")


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


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class CelifNetwork(nn.Module):
    """The network a job spec describes. Build it with :func:`build_model`."""

    def __init__(self, spec: JobSpec, *, backend: str = "auto"):
        super().__init__()
        self.spec = spec
        m = spec.model
        self.kind = spec.kind
        self.neuron = m.neuron
        self.architecture = m.architecture
        self.hidden = list(m.hidden)
        self.input_size = spec.input_size
        self.output_size = spec.output_size
        self.uses_te = spec.uses_te
        self.te_length = spec.te_length
        self.backend = backend if backend != "auto" else spec.training.backend
        if self.backend not in ("auto", "fused", "reference"):
            raise ValueError(
                f"backend must be 'auto', 'fused' or 'reference', got {self.backend!r}"
            )
        self.memory = spec.training.memory
        self.backend_name: str | None = None  # which scan implementation actually ran last

        sizes = [self.input_size, *self.hidden]
        if self.neuron == "lstm":
            self.lstm = nn.ModuleList(
                nn.LSTM(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
            )
        else:
            self.synapses = nn.ModuleList(
                nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
            )
            if self.architecture == "recurrent":
                self.recurrent = nn.ModuleList(nn.Linear(n, n, bias=False) for n in self.hidden)
            np_ = m.neuron_params
            if self.neuron == "plif":
                self.plif_logit = nn.ParameterList(
                    nn.Parameter(torch.tensor(_logit(np_.alpha))) for _ in self.hidden
                )
            self._params = self._neuron_params()
            if self.uses_te:
                mean, std = np_.te_init_mean, np_.te_init_std  # TE ~ N(mean, std^2)
                if m.te_shared:
                    self.te = nn.Parameter(
                        torch.randn(self.te_length, max(self.hidden)) * std + mean
                    )
                else:
                    self.te_tables = nn.ParameterList(
                        nn.Parameter(torch.randn(self.te_length, n) * std + mean)
                        for n in self.hidden
                    )
        self.readout = nn.Linear(self.hidden[-1], self.output_size)

    # ------------------------------------------------------------------ neuron parameters
    def _neuron_params(self) -> dict[str, Any]:
        p = self.spec.model.neuron_params
        out: dict[str, Any] = {
            "alpha": p.alpha,
            "theta0": p.theta0,
            "surrogate_width": p.surrogate_width,
            "detach_reset": p.detach_reset,
        }
        if self.neuron in ("alif", "celif"):
            out["rho"] = p.rho
        if self.neuron == "alif":
            out["beta"] = p.beta
        if self.neuron == "celif":
            out["ce_mode"] = p.ce_mode
            out["ce_timing"] = p.ce_timing
        return out

    def _layer_params(self, layer: int) -> dict[str, Any]:
        if self.neuron == "plif":
            return {**self._params, "alpha": torch.sigmoid(self.plif_logit[layer])}
        return self._params

    def _te(self, layer: int, t0: int, steps: int) -> torch.Tensor | None:
        if not self.uses_te:
            return None
        if t0 + steps > self.te_length:
            raise ValueError(
                f"the TE table has {self.te_length} rows but the sequence reaches step "
                f"{t0 + steps} (T must be <= te_length={self.te_length})"
            )
        n = self.hidden[layer]
        table = self.te if self.spec.model.te_shared else self.te_tables[layer]
        return table[t0 : t0 + steps, :n]  # [T, N_l]

    # ------------------------------------------------------------------ streaming state
    def initial_state(self, batch_size: int) -> StreamState:
        ref = self.readout.weight
        if self.neuron == "lstm":
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
        if self.neuron == "lstm":
            for lstm, st in zip(self.lstm, state.layers, strict=True):
                h, (hn, cn) = lstm(h, st)
                new_states.append((hn, cn))
            self.backend_name = "torch"
            return h, new_states, layer_spikes
        used: set[str] = set()
        # training.memory="recompute": keep only each layer's input (the previous layer's spikes,
        # which its Linear keeps anyway) and re-run Linear + scan during backward, instead of
        # keeping the current, U and the spike/window bytes of every layer (torch checkpointing)
        recompute = self.memory == "recompute" and torch.is_grad_enabled()
        for layer, st in enumerate(state.layers):
            te = self._te(layer, state.t, steps)
            params = self._layer_params(layer)
            if self.architecture == "recurrent":
                current = self._current(layer, h)
                h, st_new = self._recurrent_scan(layer, current, te, st, params)
                used.add("reference")
            else:
                args = (layer, h, te, st, params)
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

    def _current(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The layer's synaptic current ``[T, B, N]``: one GEMM over all T*B rows of ``h``."""
        steps, batch = h.shape[0], h.shape[1]
        current = self.synapses[layer](h.reshape(steps * batch, -1))
        return current.reshape(steps, batch, self.hidden[layer])

    def _feedforward_layer(
        self, layer: int, h: torch.Tensor, te: Any, st: NeuronState, params: dict[str, Any]
    ) -> tuple[torch.Tensor, NeuronState]:
        """Linear over the whole sequence, then the neuron scan: spikes ``[T, B, N]``, state."""
        res = neuron_scan(
            self._current(layer, h),
            neuron=self.neuron,
            params=params,
            te=te,
            state=st,
            backend=self.backend,
        )
        return res.spikes, res.state

    def _recurrent_scan(
        self,
        layer: int,
        current: torch.Tensor,  # (T, B, N)
        te: torch.Tensor | None,  # (T, N)
        state: NeuronState,
        params: dict[str, Any],
    ) -> tuple[torch.Tensor, NeuronState]:
        rec = self.recurrent[layer]
        st = NeuronState(*(v.detach() for v in state))
        tes = te.unbind(0) if te is not None else [None] * current.shape[0]
        spikes = []
        for i_t, te_t in zip(current.unbind(0), tes, strict=True):
            s, st = neuron_step(
                i_t + rec(st.s), neuron=self.neuron, params=params, te_t=te_t, state=st
            )
            spikes.append(s)
        return torch.stack(spikes), NeuronState(*(v.detach() for v in st))

    def _readout(
        self, h: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Readout of a chunk ``h [T, B, N]`` given the state before it."""
        if self.kind == "classification":
            total = state.spike_sum + h.sum(0)  # (B, N)
            return self.readout(total / (state.t + h.shape[0])), total
        if self.kind == "regression":
            return self.readout(h[-1]), None
        steps, batch = h.shape[0], h.shape[1]
        y = self.readout(h.reshape(steps * batch, -1)).reshape(steps, batch, -1)
        return y.transpose(0, 1), None  # (B, T, out)

    def forward_chunk(
        self, x_chunk: torch.Tensor, state: StreamState
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed ``x_chunk [B, Tc, F]``; returns (prediction so far, new state).

        Classification: the mean-over-time readout of every step seen so far; regression: the
        readout at the chunk's last step; sequence kinds: this chunk's per-step outputs
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
        """``x [B, T, F]`` -> ``[B, out]`` (classification, regression) or ``[B, T, out]``."""
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
        need_spikes = self.neuron != "lstm"
        h, _, spikes = self._hidden_pass(x.transpose(0, 1), state, record=need_spikes)
        out, _ = self._readout(h, state)
        rates = [float(s.detach().float().mean()) for s in spikes]
        recorded = None
        if record_spikes is not False and record_spikes is not None and need_spikes:
            keep = x.shape[0] if record_spikes is True else int(record_spikes)
            recorded = [s.detach()[:, :keep].transpose(0, 1) for s in spikes]
        return ModelOutput(out, rates, recorded)

    def extra_repr(self) -> str:
        return (
            f"neuron={self.neuron}, architecture={self.architecture}, hidden={self.hidden}, "
            f"kind={self.kind}, te={'shared' if self.spec.model.te_shared else 'per-layer'}"
            if self.uses_te
            else f"neuron={self.neuron}, architecture={self.architecture}, hidden={self.hidden}, kind={self.kind}"
        )


def _backend_used(requested: str, current: torch.Tensor) -> str:
    """Name of the scan implementation ``neuron_scan(current, backend=requested)`` runs."""
    if requested in ("fused", "reference"):
        return requested
    fused = current.dtype in (torch.float32, torch.float64) and fused_available(current.device)
    return "fused" if fused else "reference"


def build_model(spec: JobSpec | dict, *, backend: str = "auto") -> CelifNetwork:
    """The network of a job spec (a validated `JobSpec`, or a dict that is validated here).

    ``backend`` overrides ``spec.training.backend`` unless it is ``"auto"``."""
    if not isinstance(spec, JobSpec):
        spec = validate_spec(spec)
    return CelifNetwork(spec, backend=backend)
