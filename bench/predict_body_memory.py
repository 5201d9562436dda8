"""Peak memory of the API for one 32 MiB predict body (8 M numbers as nested JSON lists).

    python bench/predict_body_memory.py

Starts `celif serve` in a temp dir, submits a small adding job (cancelled at once: parsing and
validating the body happens before any checkpoint is needed), resets the API process's peak RSS
(`/proc/<pid>/clear_refs`, Linux; needs permission to write it, e.g. the same user), POSTs the
body and prints the status, the peak RSS growth and how long `/healthz` took meanwhile.
"""

from __future__ import annotations

import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_latency import Served  # noqa: E402


def _kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def main() -> int:
    row = "[" + ",".join(["[0.5,1]"] * 100) + "]"  # T=100 steps of F=2
    body = b'{"inputs":[' + ",".join([row] * 40_000).encode() + b"]}"
    with tempfile.TemporaryDirectory() as tmp:
        served = Served(Path(tmp), None)
        try:
            client = httpx.Client(
                base_url=served.url,
                headers={"Authorization": f"Bearer {served.token}"},
                timeout=300,
            )
            job = client.post(
                "/api/v1/jobs", json={"task": {"name": "adding", "params": {"seq_len": 100}}}
            ).json()["id"]
            client.post(f"/api/v1/jobs/{job}/cancel")
            pid = served.proc.pid
            before = _kib(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            health: list[float] = []
            done = threading.Event()

            def probe() -> None:
                while not done.is_set():
                    t0 = time.perf_counter()
                    try:
                        httpx.get(f"{served.url}/healthz", timeout=60)
                    except httpx.HTTPError:
                        return  # the server is stopping
                    health.append(time.perf_counter() - t0)
                    time.sleep(0.05)

            threading.Thread(target=probe, daemon=True).start()
            t0 = time.perf_counter()
            r = client.post(
                f"/api/v1/jobs/{job}/predict",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            took = time.perf_counter() - t0
            done.set()
            peak = _kib(pid, "VmHWM")
            detail = r.json()["detail"]
            msg = detail[0]["msg"] if isinstance(detail, list) else detail
            print(
                f"body {len(body) / 2**20:.1f} MiB -> {r.status_code} in {took:.2f} s: {msg[:90]}"
            )
            print(f"API peak RSS: +{(peak - before) / 1024:.0f} MiB over {before / 1024:.0f} MiB")
            if health:
                print(f"/healthz meanwhile: max {max(health):.2f} s over {len(health)} probes")
        finally:
            served.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
