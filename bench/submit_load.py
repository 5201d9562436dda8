"""Job submission under load: N submissions from C concurrent clients.

Checks that every submission is stored exactly once (each has its own name and Idempotency-Key;
a share of them are replayed with the same key, which must return the same job), then prints
p50/p99 latency. Against a running server:

    python bench/submit_load.py --url http://127.0.0.1:8000 --token $TOKEN

or let it start `celif serve` (embedded: SQLite + filesystem broker) in a temp dir itself:

    python bench/submit_load.py --serve

The submitted jobs are cancelled at the end (they are tiny adding jobs in any case).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

SPEC = {
    "task": {"name": "adding", "params": {"seq_len": 20}},
    "model": {"neuron": "celif", "hidden": [16, 16]},
    "training": {"max_steps": 50, "batch_size": 32, "eval_every": 25, "checkpoint_every": 50},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_serve(port: int) -> tuple[subprocess.Popen, str, str]:
    data = Path(tempfile.mkdtemp(prefix="celif-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "celif_cli.main", "serve", "--port", str(port),
           "--data-dir", str(data), "--loglevel", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    token = None
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("celif serve exited:\n" + "".join(lines))
        m = re.search(r"TOKEN=(\S+)", "".join(lines))
        token = token or (m.group(1) if m else None)
        try:
            if token and httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url, token
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("celif serve did not come up in 120 s")


def run(url: str, token: str, jobs: int, clients: int, replay_every: int, warmup: int) -> int:
    run_id = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {token}"}
    api = f"{url}/api/v1"
    latencies: list[float] = []
    ids: dict[int, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(headers=headers, timeout=60)
        return local.c

    def submit(i: int) -> None:
        body = {**SPEC, "name": f"load-{run_id}-{i}"}
        key = {"Idempotency-Key": f"load-{run_id}-{i}"}
        t0 = time.perf_counter()
        r = client().post(f"{api}/jobs", json=body, headers=key)
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            if r.status_code != 201:
                errors.append(f"#{i}: {r.status_code} {r.text[:200]}")
                return
            ids[i] = r.json()["id"]
        if replay_every and i % replay_every == 0:  # a client retry: same key, same job
            again = client().post(f"{api}/jobs", json=body, headers=key)
            if again.status_code not in (200, 201) or again.json()["id"] != ids[i]:
                with lock:
                    errors.append(f"#{i}: replay gave {again.status_code} {again.text[:200]}")

    # Warm-up (not timed): the API process imports the Celery client and opens its broker and
    # database connections on the first submissions; steady state is what is measured.
    warm_ids = []
    with httpx.Client(headers=headers, timeout=60) as c:
        for i in range(warmup):
            t0 = time.perf_counter()
            r = c.post(f"{api}/jobs", json={**SPEC, "name": f"warmup-{run_id}-{i}"})
            r.raise_for_status()
            warm_ids.append(r.json()["id"])
            if i == 0:
                print(
                    f"first submission (cold API process): {1000 * (time.perf_counter() - t0):.0f} ms"
                )

    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(submit, range(jobs)))
    wall = time.perf_counter() - t_start

    # Every submission stored exactly once: list own jobs (all pages) and count by name.
    seen: dict[str, list[str]] = {}
    cursor = None
    with httpx.Client(headers=headers, timeout=60) as c:
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = c.get(f"{api}/jobs", params=params).json()
            for job in page["items"]:
                if (job.get("name") or "").startswith(f"load-{run_id}-"):
                    seen.setdefault(job["name"], []).append(job["id"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        missing = [i for i in range(jobs) if f"load-{run_id}-{i}" not in seen]
        dupes = {n: v for n, v in seen.items() if len(v) > 1}
        for job_id in [
            *ids.values(),
            *warm_ids,
        ]:  # clean up: the bench measures submission, not training
            c.post(f"{api}/jobs/{job_id}/cancel")

    ms = [x * 1000 for x in latencies]
    print(f"submissions: {jobs} from {clients} concurrent clients in {wall:.2f} s "
          f"({jobs / wall:.1f}/s); replays every {replay_every}")  # fmt: skip
    print(f"latency ms: p50 {percentile(ms, 50):.1f}  p90 {percentile(ms, 90):.1f}  "
          f"p99 {percentile(ms, 99):.1f}  max {max(ms):.1f}  mean {statistics.mean(ms):.1f}")  # fmt: skip
    print(f"stored: {len(seen)} distinct, missing {len(missing)}, duplicated {len(dupes)}, "
          f"errors {len(errors)}")  # fmt: skip
    for e in errors[:10]:
        print("  error:", e)
    ok = not errors and not missing and not dupes and len(seen) == jobs
    print("OK: every job stored exactly once" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    p.add_argument("--token", default=os.environ.get("CELIF_TOKEN"), help="API token")
    p.add_argument("--serve", action="store_true", help="start `celif serve` in a temp dir")
    p.add_argument("--port", type=int, default=8765, help="port for --serve")
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed submissions first")
    p.add_argument("--replay-every", type=int, default=10, help="replay every k-th submission")
    args = p.parse_args(argv)
    if args.serve == bool(args.url):
        p.error("give exactly one of --url (with --token) or --serve")
    if args.url and not args.token:
        p.error("--token is required with --url (or set CELIF_TOKEN)")
    proc = None
    try:
        if args.serve:
            proc, url, token = start_serve(args.port)
        else:
            url, token = args.url.rstrip("/"), args.token
        return run(url, token, args.jobs, args.clients, args.replay_every, args.warmup)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
