"""Neuron-kernel benchmark: one training step of the paper's Seq-MNIST network.

Network 1-64-88-88-10 (feedforward: each Linear applied to the whole [T, B, F] sequence at once,
then the neuron scan), readout averaged over time, cross-entropy, Adam, T=784. Every config runs
in its own subprocess so its peak memory (growth of the process's max RSS during training steps)
is clean; all configs run in the same invocation so their times are comparable.

    python bench/neurons.py                      # B=64 and B=256, 5 timed steps each
    python bench/neurons.py --batch 64 --steps 5 --configs gemm celif-fused
    python bench/neurons.py --device cuda --configs gemm celif-fused celif-reference lif-fused
    python bench/neurons.py --hidden 64 152 152 --batch 256 --configs gemm celif-fused

Columns: median step time, ratio to the GEMM-only bound (the same network with every neuron
replaced by the identity), peak RSS growth over the warm-up and timed steps (process baseline
taken after imports, model and data), and the exact bytes autograd keeps between forward and
backward (saved tensors, unique storages, input excluded). On ``--device cuda`` the fused
configs run the Triton kernel, step times are taken after ``torch.cuda.synchronize()`` and the
peak column is the growth of ``torch.cuda.max_memory_allocated`` instead of RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "gemm": "GEMM-only bound (neuron = identity)",
    "celif-fused": "CE-LIF, fused kernel (ours)",
    "celif-fused-previous": "CE-LIF, fused kernel, ce_timing=previous (ours)",
    "celif-fused-recompute": "CE-LIF, fused kernel, scan memory=recompute (ours)",
    "celif-layer-recompute": "CE-LIF, fused kernel, training.memory=recompute (ours)",
    "celif-reference": "CE-LIF, reference per-step loop (ours)",
    "lif-fused": "LIF, fused kernel (ours)",
    "snntorch": "snnTorch Leaky (per-step loop)",
    "spikingjelly": "SpikingJelly LIFNode multi-step",
}
HIDDEN = (64, 88, 88)


def build(kind: str, T: int, hidden: tuple[int, ...] = HIDDEN):
    import torch
    import torch.utils.checkpoint
    from torch import nn

    from celif_core.functional import neuron_scan

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = (1, *hidden)
            self.fcs = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False)
            )
            self.readout = nn.Linear(hidden[-1], 10)
            # one TE table shared across layers, layer l uses its first N_l columns
            self.te = nn.Parameter(torch.randn(T, max(hidden)) * 0.1)
            if kind == "snntorch":
                import snntorch as snn

                self.lifs = nn.ModuleList(
                    snn.Leaky(beta=0.5, threshold=0.3, reset_mechanism="zero") for _ in hidden
                )
            if kind == "spikingjelly":
                from spikingjelly.activation_based import neuron, surrogate

                # decay_input=False: H = V*(1 - 1/tau) + X, i.e. alpha = 0.5 at tau = 2
                self.lifs = nn.ModuleList(
                    neuron.LIFNode(
                        tau=2.0,
                        decay_input=False,
                        v_threshold=0.3,
                        v_reset=0.0,
                        surrogate_function=surrogate.Sigmoid(),
                        step_mode="m",
                    )  # fmt: skip
                    for _ in hidden
                )

        def neuron(self, layer: int, cur):  # cur [T, B, N] -> spikes [T, B, N]
            n = cur.shape[2]
            p = dict(alpha=0.5, rho=0.99, theta0=0.3, surrogate_width=0.5)
            if kind == "gemm":
                return cur
            if kind.startswith("celif"):
                backend = "reference" if kind == "celif-reference" else "fused"
                memory = "recompute" if kind == "celif-fused-recompute" else "store"
                if kind == "celif-fused-previous":  # neuroseqbench's reading
                    p["ce_timing"] = "previous"
                te = self.te[:, :n]
                return neuron_scan(
                    cur, neuron="celif", params=p, te=te, backend=backend, memory=memory
                ).spikes
            if kind == "lif-fused":
                return neuron_scan(cur, neuron="lif", params=p, backend="fused").spikes
            if kind == "snntorch":
                lif = self.lifs[layer]
                mem = lif.init_leaky()
                out = []
                for x_t in cur.unbind(0):  # unbind once: cheaper than cur[t] in the loop
                    spk, mem = lif(x_t, mem)
                    out.append(spk)
                return torch.stack(out)
            if kind == "spikingjelly":
                return self.lifs[layer](cur)
            raise ValueError(f"unknown config {kind!r}")

        def forward(self, x):  # x [T, B, 1]
            h = x
            for layer, fc in enumerate(self.fcs):
                if kind == "celif-layer-recompute":  # what models.py does for this setting
                    h = torch.utils.checkpoint.checkpoint(
                        lambda h, layer=layer, fc=fc: self.neuron(layer, fc(h)),
                        h,
                        use_reentrant=False,
                    )
                else:
                    h = self.neuron(layer, fc(h))  # one GEMM over all T*B rows, then the scan
            return self.readout(h).mean(0)  # [B, 10]

    return Net()


def worker(kind: str, batch: int, args: argparse.Namespace) -> dict:
    import torch

    steps, warmup, T, threads, malloc = args.steps, args.warmup, args.seq, args.threads, args.malloc
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    if malloc == "tuned":  # same for every config, competitors included
        from celif_core.kernels import tune_allocator

        tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build(kind, T, tuple(args.hidden)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(T, batch, 1, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if "fused" in kind or kind.endswith("recompute"):
        from celif_core.functional import active_backend

        expected = "fused-triton" if cuda else "fused-cpu"
        assert active_backend(device) == expected, f"{expected} kernel unavailable"
    reset = None
    if kind == "spikingjelly":
        from spikingjelly.activation_based import functional as sjf

        reset = sjf.reset_net

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if reset is not None:
            reset(net)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # exact bytes autograd keeps between forward and backward (unique storages), all layers
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(net(x), y)
    saved_mb = (sum(seen.values()) - x.untyped_storage().nbytes()) / 2**20
    del loss
    if reset is not None:
        reset(net)

    # peak RSS growth over the whole run from here (ru_maxrss is KiB on Linux); the baseline
    # holds torch, the model, the data and the loaded kernel, so this is what training adds
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:  # on the GPU: growth of the allocator's peak over what is allocated now
        torch.cuda.reset_peak_memory_stats(device)
        rss0 = torch.cuda.memory_allocated(device) / 1024.0
    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        rss1 = torch.cuda.max_memory_allocated(device) / 1024.0
    return {
        "median_s": statistics.median(times),
        "times": times,
        "peak_mb": (rss1 - rss0) / 1024.0,
        "saved_mb": saved_mb,
    }


def available(kind: str) -> str | None:
    mod = {"snntorch": "snntorch", "spikingjelly": "spikingjelly"}.get(kind)
    if mod is None:
        return None
    import importlib.util

    if importlib.util.find_spec(mod) is None:
        return f"{mod} not installed (pip install -e '.[bench]')"
    return None


def run_worker(kind: str, batch: int, args: argparse.Namespace, env: dict) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", kind, str(batch)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--seq", str(args.seq), "--threads", str(args.threads), "--malloc", args.malloc]
    cmd += ["--device", args.device, "--hidden", *map(str, args.hidden)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(f"  {kind} B={batch} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds per config (median of rounds)"
    )
    ap.add_argument("--seq", type=int, default=784)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument(
        "--malloc",
        choices=["tuned", "glibc"],
        default="tuned",
        help="tuned: celif_core.kernels.tune_allocator() in every config (reuse big blocks "
        "instead of mmap/munmap per tensor); glibc: the defaults",
    )
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: fused = the Triton kernel"
    )
    ap.add_argument(
        "--hidden", type=int, nargs="+", default=list(HIDDEN), help="hidden layer widths"
    )
    ap.add_argument("--worker", nargs=2, metavar=("CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        kind, batch = args.worker[0], int(args.worker[1])
        res = worker(kind, batch, args)
        print("RESULT " + json.dumps(res))
        return

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda: no CUDA device is available to torch {torch.__version__}")
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"T={args.seq}, hidden 1-{'-'.join(map(str, args.hidden))}-10, {args.steps} timed steps "
        f"after {args.warmup} warm-up, {args.repeat} round(s), malloc {args.malloc}, "
        f"load average {os.getloadavg()[0]:.1f}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    kinds = ["gemm", *[c for c in args.configs if c != "gemm"]]
    for kind in kinds:
        note = available(kind)
        if note:
            print(f"  skip {kind}: {note}", file=sys.stderr)
    kinds = [k for k in kinds if available(k) is None]
    rows = []
    for batch in args.batch:
        # --repeat R cycles through all configs R times (interleaved, so a burst of load from
        # other processes hits every config alike) and keeps each config's median step time
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for kind in kinds:
                res = run_worker(kind, batch, args, env)
                if res is None:
                    continue
                runs[kind].append(res)
                print(
                    f"  B={batch:<4} {kind:<22} {res['median_s']:.3f} s  "
                    f"peak +{res['peak_mb']:.0f} MB  saved {res['saved_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
        med = {k: statistics.median(r["median_s"] for r in v) for k, v in runs.items() if v}
        gemm = med.get("gemm")
        for kind in kinds:
            if kind not in med:
                continue
            ratio = med[kind] / gemm if gemm else float("nan")
            peak = max(r["peak_mb"] for r in runs[kind])
            saved = runs[kind][0]["saved_mb"]
            rows.append((batch, kind, med[kind], ratio, peak, saved))
    print()
    print(
        f"| B | config | step time (s) | x GEMM-only | peak {'GPU memory' if args.device == 'cuda' else 'RSS'} growth (MB) | saved for backward (MB) |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for batch, kind, t, ratio, mb, saved in rows:
        print(f"| {batch} | {CONFIGS[kind]} | {t:.3f} | {ratio:.2f} | {mb:.0f} | {saved:.0f} |")


if __name__ == "__main__":
    main()
