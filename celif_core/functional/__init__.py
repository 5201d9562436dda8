"""Neuron math as pure functions over time-major ``[T, B, N]`` tensors.

See ``docs/architecture.md`` (contract) and ``docs/kernels.md`` (backends).
"""

from celif_core.functional.reference import (
    CE_MODES,
    NEURONS,
    NeuronState,
    ScanResult,
    neuron_step,
    reference_scan,
    spike_fn,
    spike_fn_primitive,
)
from celif_core.functional.scan import (
    BACKENDS,
    active_backend,
    alif,
    celif,
    celif_traces,
    fused_available,
    lif,
    neuron_scan,
    plif,
)

__all__ = [
    "BACKENDS",
    "CE_MODES",
    "NEURONS",
    "NeuronState",
    "ScanResult",
    "active_backend",
    "alif",
    "celif",
    "celif_traces",
    "fused_available",
    "lif",
    "neuron_scan",
    "neuron_step",
    "plif",
    "reference_scan",
    "spike_fn",
    "spike_fn_primitive",
]
