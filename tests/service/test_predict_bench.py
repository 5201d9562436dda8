"""`bench/predict_latency.py --local` end to end, briefly: its own checkpoint and database, a
server of one and one of two processes, the raw client in its own process; every table it
prints (no figure is checked: they are timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.service.predict_helpers import MNIST_DIR

REPO = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_and_prints_its_tables(tmp_path):
    out = tmp_path / "figures.json"
    cmd = [sys.executable, "bench/predict_latency.py", "--local", "--no-64", "--seconds", "1", "--repeat", "1", "--formats", "json,npy", "--batching", "auto", "--processes", "1,2", "--client", "raw", "--concurrency", "4", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
    env.update(PYTHONPATH=str(REPO), CELIF_MNIST_DIR=MNIST_DIR)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "clients: an asyncio raw-HTTP client in a process of its own" in r.stdout
    assert "predict_batching=auto for this model:" in r.stdout
    assert "| 4/1 throughput |" in r.stdout
    figures = json.loads(out.read_text())
    setups = {(c["setup"], c["format"], c["clients"]) for c in figures["cases"]}
    assert setups == {
        (f"{n} proc, batching auto", fmt, clients)
        for n in (1, 2)
        for fmt in ("json", "npy")
        for clients in (1, 4)
    }
    for case in figures["cases"]:
        assert case["requests"] > 0
        assert case["server_cpu_ms_per_request"] > 0  # the server's process tree was read
    assert len(figures["summary"]) == 4
