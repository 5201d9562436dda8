"""Every enumerated model-side name, defined once: spec.py, cli.py, the functional and kernel
layers, the network builder (and, through the API's catalog, the dashboard) import them here.

Imports nothing, so anything may import it. The values are what users write in a job spec.
"""

from __future__ import annotations

TASK_NAMES = ("seq_mnist", "ps_mnist", "adding", "copy_memory", "dataset")
MNIST_TASKS = ("seq_mnist", "ps_mnist")  # a finite training split: epochs are defined
SYNTHETIC_TASKS = ("adding", "copy_memory")  # a fresh batch every step
# what a task's targets are; each kind has one readout (READOUT_OF_KIND)
TASK_KINDS = ("classification", "regression", "sequence", "sequence_regression")

SPIKING_NEURONS = ("lif", "alif", "plif", "celif")
NEURON_NAMES = (*SPIKING_NEURONS, "lstm")
ARCHITECTURES = ("feedforward", "recurrent")

# CE-LIF's contextual embedding (the paper's ablation). The order is the kernels' mode ids
# (`CeMode` in kernels/scan_cpu.cpp, the ids in kernels/scan_triton.py): append, never reorder.
CE_MODES = ("none", "spike", "membrane", "te", "spike_te", "membrane_te")
TE_CE_MODES = ("te", "spike_te", "membrane_te")  # the ce_modes that read a TE table
# which membrane drives CE-LIF's threshold memory: U[t] or the previous step's pre-reset U[t-1]
CE_TIMINGS = ("current", "previous")

# How the network holds its temporal-encoding tables: none (no TE ce_mode), one table of the
# widest layer that every layer reads the first N_l columns of, or one table per layer.
TE_MODES = ("none", "shared", "per_layer")

# The readout Linear maps the last hidden layer to the output: of the mean spike count over
# time (= the mean over time of the readout), of the last step, or at every step.
READOUTS = ("mean", "last", "every")
READOUT_OF_KIND = {
    "classification": "mean",
    "regression": "last",
    "sequence": "every",
    "sequence_regression": "every",
}

# What a training step keeps for backward. "store": what backward needs; "recompute": only the
# input, re-running the forward inside backward. In a job spec (`training.memory`) the unit is
# one hidden layer (Linear + neuron scan, its input the previous layer's spikes); in
# `neuron_scan(memory=...)` it is the scan alone (its input the current).
MEMORY_MODES = ("store", "recompute")
# Spellings accepted from older specs, mapped by `spec.validate_spec` (and only there).
MEMORY_ALIASES = {"auto": "store"}  # "auto" never chose anything: it always stored

# Which scan implementation runs: the fused kernel when available ("auto"), or one forced.
BACKENDS = ("auto", "fused", "reference")
SCAN_BACKENDS = (*BACKENDS, "triton")  # neuron_scan also takes the Triton kernel by name
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "step")
