"""Helpers of the predict, streams, datasets and dashboard tests (plain functions and classes;
the fixtures are in `fixtures_predict.py`, loaded as a plugin by those test modules).

- `make_job`: register a finished job of a user whose checkpoint is a given file, as the worker
  would (a job row and a checkpoint row, the file copied under the storage dir).
- `EmbeddedServer`: `celif serve` (API + Celery worker on SQLite and the filesystem broker) in a
  temp dir, for the end-to-end tests (a dataset upload trained by the real worker; the browser).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from jobstore.db.models import Checkpoint, Job, User
from jobstore.db.session import session_scope
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
MNIST_DIR = os.environ.get("CELIF_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
PREDICT_LIMIT = 8  # settings.max_predict_sequences of pserver
UPLOAD_LIMIT = 200_000  # settings.max_upload_bytes of pserver

SPECS: dict[str, dict[str, Any]] = {
    "seq_mnist": {
        "name": "mnist-tiny",
        "task": {"name": "seq_mnist", "params": {"val_size": 100, "train_subset": 64}},
        "model": {"neuron": "celif", "hidden": [16, 24]},
        "training": {"max_steps": 2, "batch_size": 16, "device": "cpu"},
    },
    "adding": {
        "name": "adding-tiny",
        "task": {"name": "adding", "params": {"seq_len": 24, "val_size": 64, "test_size": 64}},
        "model": {"neuron": "celif", "hidden": [16, 16]},
        "training": {
            "max_steps": 30,
            "batch_size": 32,
            "eval_every": 15,
            "checkpoint_every": 15,
            "lr": 0.005,
            "device": "cpu",
        },
    },
    "copy_memory": {
        "name": "copy-tiny",
        "task": {"name": "copy_memory", "params": {"delay": 8, "val_size": 32, "test_size": 32}},
        "model": {"neuron": "lif", "hidden": [16]},
        "training": {"max_steps": 2, "batch_size": 8, "device": "cpu"},
    },
}


@dataclass(frozen=True)
class Trained:
    spec: dict[str, Any]  # the validated spec, defaults filled
    path: Path
    step: int


def make_job(
    db_url: str,
    storage_dir: Path,
    trained: Trained,
    *,
    owner: str = "alice",
    with_checkpoint: bool = True,
) -> str:
    """Register a finished job of `owner` whose checkpoint is `trained` (as the worker would)."""
    with session_scope(db_url) as session:
        user = session.scalars(select(User).where(User.name == owner)).one()
        spec = trained.spec
        job = Job(
            owner_id=user.id,
            name=spec.get("name"),
            task_name=spec["task"]["name"],
            neuron=spec["model"]["neuron"],
            spec=spec,
            status="succeeded",
            step=trained.step,
            max_steps=spec["training"]["max_steps"] or trained.step,  # an epochs budget: its steps
        )
        session.add(job)
        session.flush()
        if with_checkpoint:
            rel = Path("checkpoints") / job.id / f"step-{trained.step:08d}.safetensors"
            dest = Path(storage_dir) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trained.path, dest)
            payload = dest.read_bytes()
            session.add(
                Checkpoint(
                    job_id=job.id,
                    step=trained.step,
                    path=str(rel),
                    size=len(payload),
                    sha256=hashlib.sha256(payload).hexdigest(),
                    metrics={},
                    is_best=True,
                )
            )
        return job.id


# ----------------------------------------------------------------------------- celif serve
class EmbeddedServer:
    """`celif serve` in `data_dir` (SQLite + filesystem broker + one supervised worker)."""

    def __init__(self, data_dir: Path, *, extra_env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
        env.update(
            PYTHONPATH=str(REPO),
            OMP_NUM_THREADS="1",
            CELIF_MNIST_DIR=MNIST_DIR,
            CELIF_HEARTBEAT_INTERVAL_S="0.5",
            CELIF_METRICS_FLUSH_INTERVAL_S="0.3",
            **(extra_env or {}),
        )
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def __enter__(self) -> EmbeddedServer:
        cmd = [sys.executable, "-m", "celif_cli.main", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), "--loglevel", "WARNING"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=self.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"celif serve exited:\n{self.output[-3000:]}")
            m = re.search(r"TOKEN=(\S+)", self.output)
            if m and self.token is None:
                self.token = m.group(1)
            if self.token:
                try:
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"celif serve did not come up:\n{self.output[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> Any:
    return wait_for(predicate, timeout, what, interval)
