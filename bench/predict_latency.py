"""Predict latency and throughput against the API: one client and 16 concurrent clients, one
(and 64) Seq-MNIST test digits of 784 steps per request, JSON and NPY bodies, batching off and
on, one and several API processes, side by side with the in-process forward time of the same
model; each case's CPU time per request on both sides; and the model cache's effect.

    # the figures of docs/benchmarks.md: the shipped seq-MNIST model (the paper's 83.5k,
    # 1-64-88-88-10, trained) in a temp SQLite database, then one API server per setup
    # (processes x batching), in turn; without --checkpoint an untrained model of --hidden
    nice -n -10 python bench/predict_latency.py --local --no-64 \
        --checkpoint docs/results/checkpoints/paper_seq_mnist-83k/best.safetensors

    # against a running server and an existing seq_mnist job with a checkpoint
    python bench/predict_latency.py --url http://127.0.0.1:8000 --token $TOKEN --job JOB_ID

    # self-contained: start `celif serve` in a temp dir, train a small seq_mnist job until its
    # first checkpoint (then cancel it, so the worker is idle while we measure), then measure
    python bench/predict_latency.py --serve

The clients are cheap and outside the server: `wrk` when installed (Debian: apt-get install
wrk), else an asyncio raw-HTTP client in a process of its own; the output says which. On a
machine whose cores the clients share with the server, throughput(16)/throughput(1) <=
cores x L1 / (CPU per request of server + client under load), L1 the single-client time per
request: the bound is printed next to the ratio. Run it with `nice -n -10` (as root): the
benchmark then also sets its autogroup's nice, without which nice does not act against other
sessions' processes. Prints Markdown tables; `--json` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
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


# ----------------------------------------------------------------------------- clients
NPY = "application/x-npy"


def npy_body(inputs: list) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(inputs, dtype=np.float32))
    return buf.getvalue()


def request_body(inputs: list, fmt: str) -> tuple[bytes, str]:
    """(body, content type) of a predict request; the answer is asked in the same format."""
    if fmt == "npy":
        return npy_body(inputs), NPY
    return json.dumps({"inputs": inputs}).encode(), "application/json"


def timed_predict(
    client: httpx.Client, job_id: str, inputs: list, fmt: str = "json"
) -> tuple[float, Any]:
    """One predict through httpx (the cache-effect calls); `fmt` "npy": NPY in and out."""
    body, ctype = request_body(inputs, fmt)
    start = time.perf_counter()
    r = client.post(
        f"/api/v1/jobs/{job_id}/predict", content=body, headers={"Content-Type": ctype, "Accept": ctype}
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    return elapsed, (r.content if fmt == "npy" else r.json())


def raw_client(url: str, path: str, token: str, body: bytes, ctype: str, clients: int, seconds: float) -> dict:  # fmt: skip
    """The load generator (run in a process of its own): `clients` keep-alive HTTP/1.1
    connections on one asyncio loop, each sending the request again as soon as its answer is
    read, for `seconds` after every connection's warm-up request. Raw sockets, no HTTP
    library: its CPU per request (reported) is a small part of the server's."""
    import asyncio
    import resource

    host, port = url.split("//", 1)[1].split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ctype}\r\nAccept: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body

    async def one(reader, writer) -> None:
        writer.write(request)
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"predict answered {status!r}")
        length = None
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:
            raise RuntimeError("an answer without Content-Length")
        await reader.readexactly(length)

    async def main() -> tuple[list[float], float, float]:
        conns = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]
        for r, w in conns:  # warm-up, not counted
            await one(r, w)
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds

        async def loop(r, w) -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                await one(r, w)
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(loop(r, w) for r, w in conns))
        wall = time.perf_counter() - start
        for _, w in conns:
            w.close()
        return latencies, start, wall

    before = resource.getrusage(resource.RUSAGE_SELF)
    latencies, _, wall = asyncio.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"latencies": latencies, "wall": wall, "client_cpu_s": cpu}


WRK_SCRIPT = """
local path_, ctype, token
function init(args)
  local f = io.open(args[1], "rb"); wrk.body = f:read("*a"); f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  wrk.headers["Accept"] = args[2]
  wrk.headers["Authorization"] = "Bearer " .. args[3]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.1f\\n",
    summary.requests, e.connect + e.read + e.write + e.timeout, e.status, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk_client(url: str, path: str, token: str, body: bytes, ctype: str, clients: int, seconds: float, tmp: Path) -> dict:  # fmt: skip
    """`wrk` (C, one thread, `clients` keep-alive connections) for whole seconds; its CPU
    from the child's rusage. wrk warms up nothing: its first requests are counted."""
    script, body_file = tmp / "post.lua", tmp / f"body-{len(body)}"
    script.write_text(WRK_SCRIPT)
    body_file.write_bytes(body)
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url + path, "--", str(body_file), ctype, token]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"RESULT (.*)", out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed:\n{out}")
    f = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(1))}
    if f["errors"] or f["non2xx"]:
        raise RuntimeError(f"wrk saw {f['errors']:.0f} errors, {f['non2xx']:.0f} non-2xx answers")
    return {
        "requests": int(f["requests"]),
        "wall": f["duration_us"] / 1e6,
        "p50": f["p50_us"] / 1e6,
        "p99": f["p99_us"] / 1e6,
        "mean": f["mean_us"] / 1e6,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


# ----------------------------------------------------------------------------- CPU accounting
def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc), for the server's CPU time."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its descendants so far (0 where /proc is absent)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def raise_priority() -> str:
    """Give this process's autogroup its nice value: with `kernel.sched_autogroup_enabled`,
    `nice` orders processes only within one session's group, so `nice -n -10` alone does not
    win the cores from other sessions' processes (measured: one forward thread got half a
    core). The servers started here stay in this session, so they share it."""
    nice = os.nice(0)
    path = Path("/proc/self/autogroup")
    if not path.exists():
        return f"nice {nice} (no autogroups)"
    try:
        path.write_text(str(nice))
    except OSError as exc:
        return f"nice {nice}; the autogroup's nice could not be set ({exc.strerror}): {path.read_text().strip()}"  # fmt: skip
    return f"nice {nice}, {path.read_text().strip()}"


# ----------------------------------------------------------------------------- servers
class LocalServer:
    """`--local`: the API on the temp database of `setup` (an untrained checkpoint registered),
    in `processes` processes: one plain uvicorn, or `service.predict.launch` (SO_REUSEPORT),
    or `uvicorn --workers` with `launcher="uvicorn"`. Started in this session (its own process
    group), so it runs at this process's priority."""

    def __init__(self, settings, *, processes: int, launcher: str, env_extra: dict[str, str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
        env.update(PYTHONPATH=str(REPO), CELIF_DATA_DIR=str(settings.data_dir))
        env.update(env_extra)  # --server-env last: it may set PYTHONPATH too
        if settings.mnist_dir:
            env["CELIF_MNIST_DIR"] = str(settings.mnist_dir)
        if processes > 1 and launcher == "reuseport":
            cmd = [sys.executable, "-m", "service.predict.launch", "--processes", str(processes), "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        else:
            cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
            if processes > 1:
                cmd += ["--workers", str(processes)]
                env["CELIF_API_PROCESSES"] = str(processes)
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, process_group=0)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode})")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the API did not come up")

    def stop(self) -> None:
        stop_process(self.proc)


def warm_up(url: str, token: str, job_id: str, inputs: list, processes: int) -> None:
    """Load the model in every process (new connections land on any of them)."""
    for _ in range(4 * processes):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:  # fmt: skip
            for fmt in ("json", "npy"):
                timed_predict(c, job_id, inputs, fmt)


def served_model(checkpoint: Path, synapses: str = "auto"):
    """The checkpoint loaded as the API loads it (`inference.prepare_for_serving`: synapses per
    `predict_synapses`, then the batching calibration), at one torch thread."""
    import torch

    from celif_core.checkpoint import load_model
    from service.inference import LoadedModel, prepare_for_serving

    torch.set_num_threads(1)
    model, spec, metadata = load_model(checkpoint)
    model.eval()
    loaded = LoadedModel("bench", model, spec, metadata, 0.0)
    prepare_for_serving(synapses, "auto")(loaded)
    return loaded


def synapse_decision(loaded) -> str:
    """What predict_synapses="auto" chose, with the times it measured per layer."""
    cal = loaded.synapse_calibration or {}
    timed = ", ".join(
        f"layer {layer}: GEMM {1000 * t['dense_s']:.3f} ms, event-driven {1000 * t['event_s']:.3f} ms"
        for layer, t in sorted(cal.items())
    )
    chosen = sorted(loaded.model.event_synapses)
    return f"event-driven layers {chosen or 'none'}" + (f" ({timed})" if timed else "")


def auto_decision(loaded) -> str:
    """What predict_batching="auto" decides for this model on this machine (the server's own
    measurement, `inference.calibrate_batching`, run here at one torch thread)."""
    cal = loaded.calibration
    if "batched_per_sequence_s" not in cal:
        return f"off (one forward {1000 * cal['alone_s']:.1f} ms CPU: compute-bound)"
    on = f"on, up to {loaded.max_batch} sequences per forward" if loaded.batching else "off"
    return (
        f"{on} (CPU per sequence: alone {1000 * cal['alone_s']:.2f} ms, at the best batch size "
        f"{1000 * cal['batched_per_sequence_s']:.2f} ms)"
    )


def in_process_forward(model, inputs: list, *, threads: int, repeats: int) -> float:
    """Median ms of `model.run` on `inputs` in this process (torch at `threads` threads)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    x = torch.from_numpy(np.asarray(inputs, dtype=np.float32)[:, :, None])
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t = time.perf_counter()
            model.run(x, record_spikes=True)
            if i >= 3:
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


# ----------------------------------------------------------------------------- one case
def run_case(target: dict, inputs: list, *, clients: int, seconds: float, fmt: str, client: str, pool, tmp: Path) -> dict:  # fmt: skip
    """`clients` concurrent clients for `seconds`: latency percentiles, throughput, and the CPU
    time per request of the server (its process tree, from /proc) and of the client."""
    body, ctype = request_body(inputs, fmt)
    path = f"/api/v1/jobs/{target['job_id']}/predict"
    args = (target["url"], path, target["token"], body, ctype, clients, seconds)
    before = cpu_seconds(target["pid"]) if target.get("pid") else None
    if client == "wrk":
        r = wrk_client(*args, tmp)
        n = r["requests"]
        p50, p99, mean = r["p50"], r["p99"], r["mean"]
    else:
        r = pool.submit(raw_client, *args).result()
        lat = r["latencies"]
        n = len(lat)
        p50, p99, mean = percentile(lat, 50), percentile(lat, 99), statistics.fmean(lat)
    server_cpu = cpu_seconds(target["pid"]) - before if before is not None else float("nan")
    return {
        "format": fmt,
        "sequences": len(inputs),
        "clients": clients,
        "requests": n,
        "p50_ms": 1000 * p50,
        "p99_ms": 1000 * p99,
        "mean_ms": 1000 * mean,
        "throughput_seq_per_s": len(inputs) * n / r["wall"],
        "server_cpu_ms_per_request": 1000 * server_cpu / n,
        "client_cpu_ms_per_request": 1000 * r["client_cpu_s"] / n,
    }


def summarise(cases: list[dict], forward_ms: float | None, concurrency: int, cores: int) -> list[dict]:  # fmt: skip
    """Per (server setup, format), one-sequence cases: the 16/1 throughput ratio, p50 over the
    in-process forward, and the bound cores x L1 / (CPU per request under load, both sides)."""
    rows = []
    keys = sorted({(c["setup"], c["format"], c["run"]) for c in cases if c["sequences"] == 1})
    for setup, fmt, run in keys:
        pick = {
            c["clients"]: c
            for c in cases
            if (c["setup"], c["format"], c["run"], c["sequences"]) == (setup, fmt, run, 1)
        }
        one, many = pick.get(1), pick.get(concurrency)
        if not one or not many:
            continue
        l1 = 1000 / one["throughput_seq_per_s"]  # ms per request, one client
        cpu = many["server_cpu_ms_per_request"] + many["client_cpu_ms_per_request"]
        rows.append({
            "setup": setup, "format": fmt, "run": run,
            "ratio": many["throughput_seq_per_s"] / one["throughput_seq_per_s"],
            "p50_over_forward": one["p50_ms"] / forward_ms if forward_ms else float("nan"),
            "l1_ms": l1, "cpu_ms": cpu, "bound": cores * l1 / cpu,
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", help="base URL of a running server")
    p.add_argument(
        "--token", default=os.environ.get("CELIF_TOKEN"), help="API token (or CELIF_TOKEN)"
    )
    p.add_argument("--job", help="a seq_mnist job with a checkpoint")
    p.add_argument("--server-pid", type=int, help="--url: the server's pid, for its CPU time")
    p.add_argument(
        "--serve", action="store_true", help="start `celif serve` in a temp dir and train a job"
    )
    p.add_argument(
        "--local", action="store_true", help="an untrained checkpoint, the API alone (quickest)"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="its file, for the in-process forward time; with --local, the model served (default: an untrained one of --hidden)",
    )
    p.add_argument("--hidden", default="64,256,256", help="hidden sizes of the model")
    p.add_argument("--mnist-dir", default=os.environ.get("CELIF_MNIST_DIR"))
    p.add_argument("--seconds", type=float, default=5.0, help="length of each case")
    p.add_argument("--repeat", type=int, default=2, help="runs of every case (the spread)")
    p.add_argument("--no-64", action="store_true", help="skip the 64-sequence cases")
    p.add_argument("--formats", default="json,npy")
    p.add_argument("--batching", default="off,on,auto", help="--local: a server per setting")
    p.add_argument(
        "--processes", default="1,2", help="--local: API processes per server, a server each"
    )
    p.add_argument(
        "--launcher",
        choices=("reuseport", "uvicorn"),
        default="reuseport",
        help="--local, several processes: service.predict.launch or uvicorn --workers",
    )
    p.add_argument("--client", choices=("auto", "raw", "wrk"), default="auto", help="auto: wrk if installed")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        help="NAME=VALUE for the --local server (e.g. CELIF_PREDICT_WORKERS=1)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    priority = raise_priority()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "raw"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    served = None
    tmp = tempfile.TemporaryDirectory(prefix="celif-bench-")
    tmp_path = Path(tmp.name)
    checkpoint = args.checkpoint
    hidden = [int(h) for h in args.hidden.split(",")]
    extra = dict(kv.split("=", 1) for kv in args.server_env)
    # The raw client's own process (spawned once, reused by every case).
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        if args.local:
            sys.path.insert(0, str(REPO / "bench"))
            from profile_predict import setup

            if args.mnist_dir:
                os.environ["CELIF_MNIST_DIR"] = args.mnist_dir
            settings, token, job_id = setup(tmp_path / "local", hidden, args.checkpoint)
            checkpoint = next(Path(settings.storage_dir).rglob("*.safetensors"))
            setups = [
                (b, int(n)) for n in args.processes.split(",") for b in args.batching.split(",")
            ]
            served = LocalServer(settings, processes=1, launcher="reuseport", env_extra={**extra, "CELIF_PREDICT_BATCHING": "off"})  # fmt: skip
            url = served.url
        elif args.serve:
            served = Served(tmp_path / "data", args.mnist_dir)
            url, token = served.url, served.token
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as c:
                print(
                    f"training a seq_mnist job (hidden {hidden}) to its first checkpoint...",
                    file=sys.stderr,
                )
                job_id = train_small_job(c, hidden)
            setups = [("server's", 0)]
        else:
            if not (args.url and args.token and args.job):
                p.error("give --url, --token and --job, or --serve, or --local")
            url, token, job_id = args.url.rstrip("/"), args.token, args.job
            setups = [("server's", 0)]

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
                checkpoint = tmp_path / "best.safetensors"
                checkpoint.write_bytes(ckpt.content)
        cache = {
            "first_ms": 1000 * first,
            "first_cached": body1["cached"],
            "second_ms": 1000 * second,
            "second_cached": body2["cached"],
        }
        if args.local:
            served.stop()
            served = None
        # The forward alone, before any load: this process, the same checkpoint and input.
        # As the API runs it (predict_synapses="auto"), and with GEMMs only.
        forward, dense_forward = {}, None
        auto = synapses = "not measured"
        if checkpoint is not None:
            loaded = served_model(checkpoint)
            auto, synapses = auto_decision(loaded), synapse_decision(loaded)
            for n, inputs in ((1, one), (64, batch)):
                if n == 64 and args.no_64:
                    continue
                for threads in sorted({1, cores}):
                    forward[(n, threads)] = in_process_forward(
                        loaded.model, inputs, threads=threads, repeats=40 if n == 1 else 5
                    )
            dense = served_model(checkpoint, "dense").model
            dense_forward = in_process_forward(dense, one, threads=1, repeats=40)
        sizes = [one] + ([] if args.no_64 else [batch])
        cases = []
        for mode, processes in setups:
            label = mode if not processes else f"{processes} proc, batching {mode}"
            target = {"url": url, "token": token, "job_id": job_id, "pid": args.server_pid}
            if args.local:
                env = {**extra, "CELIF_PREDICT_BATCHING": mode}
                served = LocalServer(settings, processes=processes, launcher=args.launcher, env_extra=env)  # fmt: skip
                warm_up(served.url, token, job_id, one, processes)
                target.update(url=served.url, pid=served.proc.pid)
            elif args.serve:
                target["pid"] = served.proc.pid
            for run in range(1, args.repeat + 1):
                for inputs in sizes:
                    for clients in (1, args.concurrency):
                        for fmt in args.formats.split(","):
                            r = run_case(target, inputs, clients=clients, seconds=args.seconds, fmt=fmt, client=client, pool=pool, tmp=tmp_path)  # fmt: skip
                            cases.append({"setup": label, "run": run, **r})
            if args.local:
                served.stop()
                served = None
    finally:
        pool.shutdown()
        if served is not None:
            served.stop()
        tmp.cleanup()

    how = {
        "wrk": f"wrk (C, one thread, 1 or {args.concurrency} keep-alive connections)",
        "raw": f"an asyncio raw-HTTP client in a process of its own (1 or {args.concurrency} keep-alive connections)",  # fmt: skip
    }[client]
    print(f"clients: {how}, on the same {cores} cores as the server; {args.seconds:g} s per case, {args.repeat} runs")  # fmt: skip
    print(f"priority: {priority}; load average before: {os.getloadavg()[0]:.1f}")
    print(f"cache: first call {cache['first_ms']:.0f} ms (cached={cache['first_cached']}), "
          f"second call {cache['second_ms']:.0f} ms (cached={cache['second_cached']})")  # fmt: skip
    for (n, threads), ms in forward.items():
        print(f"in-process forward, {n} x 784 steps, torch threads {threads}: {ms:.2f} ms")
    if dense_forward is not None:
        print(f"in-process forward, 1 x 784 steps, torch threads 1, GEMMs only (predict_synapses=dense): {dense_forward:.2f} ms")  # fmt: skip
    print(f"predict_synapses=auto for this model: {synapses}")
    print(f"predict_batching=auto for this model: {auto}")
    print()
    print("| server | run | sequences x 784 steps | format | clients | requests | p50 ms | p99 ms | sequences/s | server CPU ms/request | client CPU ms/request |")  # fmt: skip
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in cases:
        print(f"| {r['setup']} | {r['run']} | {r['sequences']} | {r['format']} | {r['clients']} | {r['requests']} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput_seq_per_s']:.1f} | "
              f"{r['server_cpu_ms_per_request']:.2f} | {r['client_cpu_ms_per_request']:.3f} |")  # fmt: skip
    forward_ms = forward.get((1, 1))
    summary = summarise(cases, forward_ms, args.concurrency, cores)
    print()
    print(f"One sequence per request: {args.concurrency} clients over 1 client (target >= 2.5), single-client p50 over the in-process forward at 1 thread (target <= 3), and the bound {cores} cores x L1 / CPU per request under load (server + client).")  # fmt: skip
    print()
    print(f"| server | format | run | {args.concurrency}/1 throughput | p50 / forward | L1 ms | CPU ms/request at {args.concurrency} | bound |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in summary:
        print(f"| {s['setup']} | {s['format']} | {s['run']} | {s['ratio']:.2f}x | {s['p50_over_forward']:.2f}x | "
              f"{s['l1_ms']:.2f} | {s['cpu_ms']:.2f} | {s['bound']:.2f}x |")  # fmt: skip
    if args.json:
        forward_rows = [{"sequences": n, "threads": t, "ms": ms} for (n, t), ms in forward.items()]
        args.json.write_text(json.dumps({
            "client": how, "priority": priority, "cache": cache, "forward": forward_rows,
            "dense_forward_ms": dense_forward, "auto": auto, "synapses": synapses,
            "cases": cases, "summary": summary,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
