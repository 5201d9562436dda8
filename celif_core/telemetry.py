"""Spike telemetry: per-layer firing rates and the paper's energy estimate.

The paper (supplementary, "Computational Efficiency of CE-LIF") counts one inference's operations
on 45 nm CMOS figures (Horowitz 2014): a multiply-accumulate costs E_MAC = 4.6 pJ, an accumulate
E_AC = 0.9 pJ. In a spiking network only the first layer sees an analog input, so its synapses
cost MACs every step; every later synapse (the next layers, the readout and any recurrent
weights) is driven by spikes and costs one AC per presynaptic spike. So, per sequence of T steps:

    MACs = T * F * N_1
    ACs  = T * sum_l r_l * N_l * N_(l+1)          (N_(L+1) = readout outputs)
         + T * sum_l r_l * N_l * N_l              (recurrent architecture only)

with ``r_l`` the measured firing rate of layer l (spikes per neuron per step). The neurons'
element-wise updates are left out. The LSTM baseline is all MACs:
``T * sum_l 4 * N_l * (N_(l-1) + N_l) + T * N_L * out``. Both the energy of a whole sequence
(``energy_nj``) and per timestep (``energy_nj_per_step``) are reported: the paper's Table 4
(13.5 nJ CE-LIF, 774.9 nJ LSTM) is on the per-timestep scale (an LSTM of ~154k parameters does
~154k MACs a step, 0.7 uJ).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


def energy_estimate(
    *,
    neuron: str,
    architecture: str,
    input_size: int,
    hidden: list[int],
    output_size: int,
    seq_len: int,
    firing_rates: list[float],
) -> dict[str, float]:
    """Operations and energy of one inference of one sequence."""
    t = float(seq_len)
    if neuron == "lstm":
        sizes = [input_size, *hidden]
        macs = t * sum(4 * n * (m + n) for m, n in zip(sizes[:-1], sizes[1:], strict=True))
        macs += t * hidden[-1] * output_size
        acs = 0.0
    else:
        if len(firing_rates) != len(hidden):
            raise ValueError(
                f"need one firing rate per hidden layer ({len(hidden)}), got {len(firing_rates)}"
            )
        macs = t * input_size * hidden[0]
        fan_out = [*hidden[1:], output_size]
        acs = t * sum(r * n * m for r, n, m in zip(firing_rates, hidden, fan_out, strict=True))
        if architecture == "recurrent":
            acs += t * sum(r * n * n for r, n in zip(firing_rates, hidden, strict=True))
    energy_pj = macs * E_MAC_PJ + acs * E_AC_PJ
    return {
        "mac_ops": macs,
        "ac_ops": acs,
        "energy_nj": energy_pj / 1000.0,  # one whole sequence
        "energy_nj_per_step": energy_pj / 1000.0 / t,  # the scale of the paper's Table 4
    }


def network_energy_estimate(
    net: Any, *, seq_len: int, firing_rates: list[float]
) -> dict[str, float]:
    """``energy_estimate`` for the network a `NetworkConfig` describes."""
    shape = {k: getattr(net, k) for k in ("neuron", "architecture", "input_size", "output_size")}
    return energy_estimate(
        **shape, hidden=list(net.hidden), seq_len=seq_len, firing_rates=firing_rates
    )


def spec_energy_estimate(spec: Any, *, seq_len: int, firing_rates: list[float]) -> dict[str, float]:
    """``energy_estimate`` for the network a job spec describes."""
    return network_energy_estimate(spec.network, seq_len=seq_len, firing_rates=firing_rates)


@torch.no_grad()
def spike_telemetry(
    model: Any, batches: Iterable[tuple[torch.Tensor, Any]], *, max_batches: int | None = None
) -> dict[str, Any]:
    """Firing rates per layer (averaged over the given eval batches, weighted by batch size) and
    the energy estimate per sequence."""
    was_training = model.training
    model.eval()
    sums: list[float] | None = None
    count = 0
    seq_len = None
    try:
        for i, (x, _y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            out = model.run(x)
            b = x.shape[0]
            seq_len = x.shape[1]
            rates = out.firing_rates
            sums = (
                [r * b for r in rates]
                if sums is None
                else [s + r * b for s, r in zip(sums, rates, strict=True)]
            )
            count += b
    finally:
        model.train(was_training)
    rates = [s / count for s in sums] if sums and count else []
    net = model.config  # the model's NetworkConfig
    energy = network_energy_estimate(
        net, seq_len=seq_len or net.seq_len, firing_rates=rates if net.spiking else []
    )
    return {
        "firing_rates": rates,
        "mean_firing_rate": (
            sum(r * n for r, n in zip(rates, net.hidden, strict=True)) / sum(net.hidden)
            if rates
            else None
        ),
        **energy,
        "e_ac_pj": E_AC_PJ,
        "e_mac_pj": E_MAC_PJ,
    }
