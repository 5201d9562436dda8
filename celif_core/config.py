"""The network a job describes, as a small frozen config (no torch, no training settings).

``JobSpec.network`` derives it from a validated spec; ``models.build_model(config, backend=...,
memory=...)`` builds it; :meth:`NetworkConfig.num_parameters` counts what that builds (a test
checks ``sum(p.numel())`` against it for every neuron, architecture and TE mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from celif_core.catalog import (
    ARCHITECTURES,
    NEURON_NAMES,
    READOUT_OF_KIND,
    READOUTS,
    TE_CE_MODES,
    TE_MODES,
)


@dataclass(frozen=True)
class NetworkConfig:
    """``input -> [Linear -> neuron] x len(hidden) -> Linear readout``.

    ``neuron_params``: the neuron's validated parameters (``spec.model.neuron_params``), read-only.
    ``te_mode``: ``"none"``, ``"shared"`` (one ``[te_length, max(hidden)]`` table) or
    ``"per_layer"`` (one ``[te_length, N_l]`` table per layer). ``seq_len``: the task's T.
    """

    input_size: int
    hidden: tuple[int, ...]
    output_size: int
    neuron: str = "celif"
    architecture: str = "feedforward"
    neuron_params: Mapping[str, Any] = field(default_factory=dict)
    readout: str = "mean"
    te_mode: str = "none"
    te_length: int = 0
    seq_len: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(n) for n in self.hidden))
        object.__setattr__(self, "neuron_params", MappingProxyType(dict(self.neuron_params)))
        for name, value, allowed in (
            ("neuron", self.neuron, NEURON_NAMES),
            ("architecture", self.architecture, ARCHITECTURES),
            ("readout", self.readout, READOUTS),
            ("te_mode", self.te_mode, TE_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if not self.hidden or min(self.hidden) < 1 or self.input_size < 1 or self.output_size < 1:
            raise ValueError(
                f"sizes must be positive: input {self.input_size}, hidden {list(self.hidden)}, "
                f"output {self.output_size}"
            )
        if (self.te_mode == "none") != (self.te_length == 0):
            raise ValueError(f"te_mode {self.te_mode!r} with te_length {self.te_length}")

    @classmethod
    def from_spec(cls, spec: Any) -> NetworkConfig:
        """The network of a validated `JobSpec` (its model section and the task's sizes)."""
        m = spec.model
        uses_te = m.neuron == "celif" and m.neuron_params.ce_mode in TE_CE_MODES
        return cls(
            input_size=spec.input_size,
            hidden=tuple(m.hidden),
            output_size=spec.output_size,
            neuron=m.neuron,
            architecture=m.architecture,
            neuron_params=m.neuron_params.model_dump(),
            readout=READOUT_OF_KIND[spec.kind],
            te_mode=("shared" if m.te_shared else "per_layer") if uses_te else "none",
            te_length=spec.te_length if uses_te else 0,
            seq_len=spec.seq_len,
        )

    @property
    def spiking(self) -> bool:
        return self.neuron != "lstm"

    def te_shape(self, layer: int) -> tuple[int, int]:
        """Shape of the TE table layer ``layer`` reads from (the shared one, or its own)."""
        width = max(self.hidden) if self.te_mode == "shared" else self.hidden[layer]
        return self.te_length, width

    def te_parameters(self) -> int:
        """Entries of the TE table(s): te_length rows of the widest layer, or of every layer."""
        if self.te_mode == "none":
            return 0
        widths = max(self.hidden) if self.te_mode == "shared" else sum(self.hidden)
        return self.te_length * widths

    def num_parameters(self) -> int:
        """Trainable parameters of ``build_model(self)``, TE tables included."""
        sizes = [self.input_size, *self.hidden]
        total = 0
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            if self.neuron == "lstm":
                total += 4 * n_out * (n_in + n_out) + 8 * n_out  # W_ih, W_hh, b_ih, b_hh
                continue
            total += n_in * n_out + n_out
            if self.architecture == "recurrent":
                total += n_out * n_out  # W_rec, no bias
            if self.neuron == "plif":
                total += 1  # one learnable decay per layer
        total += self.te_parameters()
        return total + self.hidden[-1] * self.output_size + self.output_size
