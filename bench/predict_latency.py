"""Predict latency against a running server: p50/p99 for 1 and for 64 sequences of 784 steps
(Seq-MNIST test digits), from one client and from 16 concurrent clients, with JSON and NPY
bodies, side by side with the in-process forward time of the same model; plus the model cache's
effect (the first call loads the checkpoint, later ones reuse it).

    # quickest: an untrained checkpoint of the paper's size registered in a temp SQLite
    # database, the API (uvicorn, its own process) started on it
    python bench/predict_latency.py --local

    # against a running server and an existing seq_mnist job with a checkpoint
    python bench/predict_latency.py --url http://127.0.0.1:8000 --token $TOKEN --job JOB_ID

    # self-contained: start `celif serve` in a temp dir, train a small seq_mnist job until its
    # first checkpoint (then cancel it, so the worker is idle while we measure), then measure
    python bench/predict_latency.py --serve

Prints a Markdown table (the figures in docs/benchmarks.md come from it); `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ----------------------------------------------------------------------------- --serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGINT to the process group we started, SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class Served:
    """`celif serve` in a temp data dir; prints nothing of its own unless it fails."""

    def __init__(self, data_dir: Path, mnist_dir: str | None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
        if mnist_dir:
            env["CELIF_MNIST_DIR"] = mnist_dir
        env["PYTHONPATH"] = str(REPO)
        cmd = [sys.executable, "-m", "celif_cli.main", "serve", "--port", str(self.port), "--data-dir", str(data_dir), "--loglevel", "WARNING"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.token = self._wait_ready()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + 180
        token = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("celif serve exited:\n" + "".join(self.lines[-40:]))
            m = re.search(r"TOKEN=(\S+)", "".join(self.lines))
            token = token or (m.group(1) if m else None)
            if token:
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return token
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("celif serve did not come up:\n" + "".join(self.lines[-40:]))

    def stop(self) -> None:
        stop_process(self.proc)


def train_small_job(client: httpx.Client, hidden: list[int]) -> str:
    spec = {
        "name": "predict-bench",
        "task": {"name": "seq_mnist", "params": {"val_size": 100, "train_subset": 512}},
        "model": {"neuron": "celif", "hidden": hidden},
        "training": {
            "max_steps": 1000,
            "batch_size": 16,
            "eval_every": 5,
            "checkpoint_every": 5,
            "eval_batch_size": 100,
            "device": "cpu",
        },
    }
    r = client.post("/api/v1/jobs", json=spec)
    r.raise_for_status()
    job_id = r.json()["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if client.get(f"/api/v1/jobs/{job_id}/checkpoints").json():
            break
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"the bench job {job['status']}: {job.get('error')}")
        time.sleep(0.5)
    else:
        raise RuntimeError("no checkpoint after 600 s")
    client.post(f"/api/v1/jobs/{job_id}/cancel")  # the worker goes idle: it must not compete
    while client.get(f"/api/v1/jobs/{job_id}").json()["status"] not in ("cancelled", "succeeded"):
        time.sleep(0.2)
    return job_id


# ----------------------------------------------------------------------------- measuring
NPY = "application/x-npy"


def npy_body(inputs: list) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(inputs, dtype=np.float32))
    return buf.getvalue()


def timed_predict(
    client: httpx.Client, job_id: str, inputs: list, fmt: str = "json"
) -> tuple[float, Any]:
    """One predict; `fmt` "npy": an NPY body answered in NPY (encoding counted in the time)."""
    start = time.perf_counter()
    if fmt == "npy":
        r = client.post(
            f"/api/v1/jobs/{job_id}/predict",
            content=npy_body(inputs),
            headers={"Content-Type": NPY, "Accept": NPY},
        )
    else:
        r = client.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": inputs})
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed, (r.content if fmt == "npy" else r.json())


def run_case(
    url: str,
    token: str,
    job_id: str,
    inputs: list,
    *,
    clients: int,
    requests: int,
    fmt: str = "json",
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"}
    per_client = max(1, requests // clients)

    started: list[float] = []
    # The clock starts once every client has warmed up (counting the warm-ups' time but not
    # their sequences would understate the throughput of many clients).
    barrier = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))

    def worker(_: int) -> list[float]:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
            timed_predict(c, job_id, inputs, fmt)  # connection warm-up (not counted)
            barrier.wait()
            return [timed_predict(c, job_id, inputs, fmt)[0] for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for batch in pool.map(worker, range(clients)) for t in batch]
    wall = time.perf_counter() - started[0]
    n = len(inputs)
    return {
        "format": fmt,
        "sequences": n,
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "mean_ms": 1000 * statistics.fmean(latencies),
        "throughput_seq_per_s": n * len(latencies) / wall,
    }


class LocalServer:
    """`--local`: an untrained checkpoint registered in a temp SQLite database
    (bench/profile_predict.py's setup) and the API alone (uvicorn in its own process)."""

    def __init__(self, tmp: Path, hidden: list[int], extra_env: dict[str, str]):
        sys.path.insert(0, str(REPO / "bench"))
        from profile_predict import setup

        settings, self.token, self.job_id = setup(tmp, hidden)
        self.checkpoint = next(Path(settings.storage_dir).rglob("*.safetensors"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
        env.update(PYTHONPATH=str(REPO), CELIF_DATA_DIR=str(settings.data_dir), **extra_env)
        if settings.mnist_dir:
            env["CELIF_MNIST_DIR"] = str(settings.mnist_dir)
        cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the API did not come up")

    def stop(self) -> None:
        stop_process(self.proc)


def in_process_forward(checkpoint: Path, inputs: list, *, threads: int, repeats: int) -> float:
    """Median ms of `model.run` on `inputs` in this process (torch at `threads` threads)."""
    import numpy as np
    import torch

    from celif_core.checkpoint import load_model

    torch.set_num_threads(threads)
    model, _, _ = load_model(checkpoint)
    model.eval()
    x = torch.from_numpy(np.asarray(inputs, dtype=np.float32)[:, :, None])
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t = time.perf_counter()
            model.run(x)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="base URL of a running server")
    p.add_argument(
        "--token", default=os.environ.get("CELIF_TOKEN"), help="API token (or CELIF_TOKEN)"
    )
    p.add_argument("--job", help="a seq_mnist job with a checkpoint")
    p.add_argument(
        "--serve", action="store_true", help="start `celif serve` in a temp dir and train a job"
    )
    p.add_argument(
        "--local", action="store_true", help="an untrained checkpoint, the API alone (quickest)"
    )
    p.add_argument("--checkpoint", type=Path, help="its file, for the in-process forward time")
    p.add_argument("--hidden", default="64,256,256", help="hidden sizes of the --serve job")
    p.add_argument("--mnist-dir", default=os.environ.get("CELIF_MNIST_DIR"))
    p.add_argument("--requests", type=int, default=64, help="timed requests per case (N=1)")
    p.add_argument("--requests-64", type=int, default=32, help="timed requests per case (N=64)")
    p.add_argument("--no-64", action="store_true", help="skip the 64-sequence cases")
    p.add_argument("--formats", default="json,npy")
    p.add_argument(
        "--batching", default="off,on", help="--local: a server per setting, measured in turn"
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        help="NAME=VALUE for the --local server (e.g. CELIF_PREDICT_WORKERS=1)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    served = None
    tmp = None
    checkpoint = args.checkpoint
    try:
        hidden = [int(h) for h in args.hidden.split(",")]
        extra = dict(kv.split("=", 1) for kv in args.server_env)
        if args.local:
            tmp = tempfile.TemporaryDirectory(prefix="celif-bench-")
            if args.mnist_dir:
                os.environ["CELIF_MNIST_DIR"] = args.mnist_dir
            mode0 = args.batching.split(",")[0]
            served = LocalServer(
                Path(tmp.name) / "first", hidden, {**extra, "CELIF_PREDICT_BATCHING": mode0}
            )
            url, token, job_id = served.url, served.token, served.job_id
            checkpoint = served.checkpoint
        elif args.serve:
            tmp = tempfile.TemporaryDirectory(prefix="celif-bench-")
            served = Served(Path(tmp.name) / "data", args.mnist_dir)
            url, token = served.url, served.token
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as c:
                print(
                    f"training a seq_mnist job (hidden {hidden}) to its first checkpoint...",
                    file=sys.stderr,
                )
                job_id = train_small_job(c, hidden)
        else:
            if not (args.url and args.token and args.job):
                p.error("give --url, --token and --job, or --serve, or --local")
            url, token, job_id = args.url.rstrip("/"), args.token, args.job

        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
            samples = c.get(f"/api/v1/jobs/{job_id}/samples", params={"split": "test", "n": 64})
            samples.raise_for_status()
            batch = samples.json()["inputs"]  # [64, 784]
            one = batch[:1]
            # Cache effect: the first call loads the checkpoint (a fresh server has not yet).
            first, body1 = timed_predict(c, job_id, one)
            second, body2 = timed_predict(c, job_id, one)
            if args.serve and checkpoint is None:
                ckpt = c.get(f"/api/v1/jobs/{job_id}/checkpoints/best")
                checkpoint = Path(tmp.name) / "best.safetensors"
                checkpoint.write_bytes(ckpt.content)
        cache = {
            "first_ms": 1000 * first,
            "first_cached": body1["cached"],
            "second_ms": 1000 * second,
            "second_cached": body2["cached"],
        }
        forward = {}
        if checkpoint is not None:
            for n, inputs in ((1, one), (64, batch)):
                if n == 64 and args.no_64:
                    continue
                for threads in sorted({1, os.cpu_count() or 1}):
                    forward[(n, threads)] = in_process_forward(
                        checkpoint, inputs, threads=threads, repeats=20 if n == 1 else 5
                    )
        cases = []
        sizes = [(one, args.requests)] + ([] if args.no_64 else [(batch, args.requests_64)])
        modes = args.batching.split(",") if args.local else ["server's"]
        for i, mode in enumerate(modes):
            if i > 0:  # --local: the same checkpoint served again, batching `mode`
                served.stop()
                served = LocalServer(
                    Path(tmp.name) / mode, hidden, {**extra, "CELIF_PREDICT_BATCHING": mode}
                )
                url, token, job_id = served.url, served.token, served.job_id
                with httpx.Client(base_url=url, timeout=600) as c:
                    c.headers["Authorization"] = f"Bearer {token}"
                    timed_predict(c, job_id, one)  # load the model
            for inputs, requests in sizes:
                for clients in (1, args.concurrency):
                    for fmt in args.formats.split(","):
                        r = run_case(
                            url, token, job_id, inputs, clients=clients, requests=requests, fmt=fmt
                        )
                        cases.append({"batching": mode, **r})
    finally:
        if served is not None:
            served.stop()
        if tmp is not None:
            tmp.cleanup()

    print(f"cache: first call {cache['first_ms']:.0f} ms (cached={cache['first_cached']}), "
          f"second call {cache['second_ms']:.0f} ms (cached={cache['second_cached']})")  # fmt: skip
    for (n, threads), ms in forward.items():
        print(f"in-process forward, {n} x 784 steps, torch threads {threads}: {ms:.1f} ms")
    print()
    print("| batching | sequences x 784 steps | format | clients | requests | p50 ms | p99 ms | sequences/s |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in cases:
        print(f"| {r['batching']} | {r['sequences']} | {r['format']} | {r['clients']} | {r['requests']} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_seq_per_s']:.1f} |")  # fmt: skip
    if args.json:
        forward_rows = [{"sequences": n, "threads": t, "ms": ms} for (n, t), ms in forward.items()]
        args.json.write_text(
            json.dumps({"cache": cache, "forward": forward_rows, "cases": cases}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
