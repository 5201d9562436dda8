"""`celif serve`: the embedded default (SQLite + filesystem broker) end to end, and the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from signal import SIGKILL

import httpx
import pytest

from tests.worker.conftest import REPO, adding_spec, free_port, wait_for


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
    keep = os.environ.get("CELIF_MNIST_DIR")
    if keep:
        env["CELIF_MNIST_DIR"] = keep
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        CELIF_HEARTBEAT_INTERVAL_S="0.5",
        CELIF_METRICS_FLUSH_INTERVAL_S="0.5",
    )
    return env


class _Output:
    """Collects a subprocess's merged output in a thread (never blocks the test)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _children(pid: int) -> list[int]:
    """Child process ids of `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> set[int]:
    todo, seen = [pid], set()
    while todo:
        for child in _children(todo.pop()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (not gone, not a zombie)."""
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    token: str
    out: _Output


@contextmanager
def embedded_serve(data: Path) -> Iterator[Served]:
    """`celif serve` (embedded) on a free port until its API answers; always stopped (SIGINT to
    its process group, SIGKILL after 30 s) and checked: no traceback, a clean stop logs no ERROR,
    and no process of it (worker, pool child) outlives it."""
    port = free_port()
    cmd = [sys.executable, "-m", "celif_cli.main", "serve", "--port", str(port), "--data-dir", str(data), "--loglevel", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=_embedded_env(data), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    out = _Output(proc)
    try:

        def token_printed():
            assert proc.poll() is None, out.text[-3000:]
            return (m := re.search(r"TOKEN=(\S+)", out.text)) and m.group(1)

        token = wait_for(token_printed, 120, "the token")
        base = f"http://127.0.0.1:{port}"
        assert base in out.text

        def healthy():
            assert proc.poll() is None, out.text[-3000:]
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 60, "the API")
        yield Served(proc, base, token, out)
    finally:
        tree = _descendants(proc.pid)
        before_stop = len(out.text)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(30)  # within the supervisor's grace period
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, SIGKILL)
            proc.wait()
            for pid in _alive(tree):
                os.kill(pid, SIGKILL)
            raise
    assert proc.returncode == 0, out.text[-3000:]
    assert "Traceback" not in out.text, out.text[-3000:]
    leftover = _alive(tree)
    for pid in leftover:
        os.kill(pid, SIGKILL)
    assert not leftover, f"processes left after celif serve stopped: {leftover}"
    assert "ERROR" not in out.text[before_stop:], out.text[before_stop:]


def test_serve_embedded_end_to_end(tmp_path: Path):
    data = tmp_path / "data"
    env = _embedded_env(data)
    with embedded_serve(data) as served:
        proc, base, token, out = served.proc, served.base, served.token, served.out
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.post(f"{base}/api/v1/jobs", json=adding_spec(), headers=headers, timeout=30)
        assert r.status_code == 201, r.text
        jid = r.json()["id"]

        def finished():
            job = httpx.get(f"{base}/api/v1/jobs/{jid}", headers=headers, timeout=10).json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_for(finished, 240, "the job to finish", 0.2)
        assert job["status"] == "succeeded", (job.get("error"), out.text[-3000:])
        metrics = httpx.get(
            f"{base}/api/v1/jobs/{jid}/metrics", headers=headers, timeout=10
        ).json()["items"]
        assert any(p["split"] == "train" and p["name"] == "loss" for p in metrics)
        assert (data / "celif.db").is_file()
        assert (data / "broker" / "queue").is_dir()
        # The embedded worker takes every queue and says so in the registry; --ping sees it.
        listing = httpx.get(f"{base}/api/v1/workers", headers=headers, timeout=10).json()
        assert [w["queues"] for w in listing["items"] if w["online"]] == [["any", "cpu", "gpu"]]
        ping = subprocess.run(
            [sys.executable, "-m", "celif_cli.main", "worker", "--ping", "--data-dir", str(data)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ping.returncode == 0 and ping.stdout.startswith("ok: worker"), ping.stderr

        # The supervised worker is restarted when it dies; the new one takes the next job.
        first = wait_for(lambda: _children(proc.pid), 30, "the worker child")[0]
        pool_of_first = wait_for(lambda: _descendants(first), 30, "the worker's pool child")
        os.kill(first, SIGKILL)
        wait_for(lambda: [c for c in _children(proc.pid) if c != first], 60, "a new worker")
        # the killed worker's pool child does not live on as an orphan
        wait_for(lambda: not _alive(pool_of_first), 30, "the orphaned pool child to exit")
        # An auto job (queue `any`) this time: the embedded worker consumes that queue too.
        r = httpx.post(
            f"{base}/api/v1/jobs",
            json=adding_spec(max_steps=20, eval_every=10, checkpoint_every=10, device="auto"),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        assert r.json()["queue"] == "any"
        jid = r.json()["id"]
        job = wait_for(finished, 240, "the job after the worker restart", 0.2)
        assert job["status"] == "succeeded", (job.get("error"), out.text[-3000:])
        # the worker and its (re-forked after each job) pool child are there to be stopped
        wait_for(lambda: len(_descendants(proc.pid)) >= 2, 30, "the pool child")

    # A second start prints no new token (first start only).
    second = subprocess.run(
        [sys.executable, "-m", "celif_cli.main", "token", "create", "--name", "bob", "--data-dir", str(data)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert re.fullmatch(r"[A-Za-z0-9_\-]{40,}\n", second.stdout), second.stdout


def test_cli_bad_args_name_the_flag():
    r = subprocess.run(
        [sys.executable, "-m", "celif_cli.main", "serve", "--port", "notaport"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--port" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "celif_cli.main", "token", "create"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "--name" in r.stderr


def test_worker_app_imports_no_torch():
    code = (
        "import sys, worker.app, worker.tasks, worker.reaper, celif_cli.main;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "c = worker.app.celery_app.conf;"
        "assert c.task_acks_late and c.task_reject_on_worker_lost;"
        "assert c.worker_prefetch_multiplier == 1 and c.worker_concurrency == 1;"
        "print('ok')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "CELIF_BROKER_URL": "redis://127.0.0.1:6379/0"},
    )  # fmt: skip
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_the_filesystem_broker_routes_by_queue(tmp_path: Path):
    """kombu's filesystem transport (the embedded default) keeps one file per message named
    after its queue and hands a consumer of one queue only that queue's messages."""
    from jobstore.queue import QUEUES, TASK_NAME, job_ids_in_broker, producer_app, queue_depth
    from jobstore.settings import Settings

    settings = Settings(data_dir=tmp_path)
    app = producer_app(settings)
    for kind, name in QUEUES.items():
        app.send_task(TASK_NAME, args=[f"job-{kind}"], queue=name)
    assert job_ids_in_broker(settings) == {f"job-{k}" for k in QUEUES}
    assert queue_depth(settings) == len(QUEUES)
    files = sorted(p.name.partition(".")[2] for p in (tmp_path / "broker" / "queue").iterdir())
    assert files == sorted(f"{name}.msg" for name in QUEUES.values())
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for kind, name in QUEUES.items():
            message = channel.basic_get(name, no_ack=True)
            assert message.headers["task"] == TASK_NAME
            assert message.decode()[0] == [f"job-{kind}"]
            assert channel.basic_get(name, no_ack=True) is None  # only its own message
    assert job_ids_in_broker(settings) == set()


@pytest.mark.parametrize("embedded", [True, False])
def test_broker_settings(tmp_path: Path, embedded: bool):
    from jobstore.queue import VISIBILITY_TIMEOUT_S, make_celery
    from jobstore.settings import Settings

    broker = None if embedded else "redis://127.0.0.1:6379/0"
    settings = Settings(data_dir=tmp_path, broker_url=broker)
    app = make_celery(settings)
    opts = app.conf.broker_transport_options
    if embedded:
        assert app.conf.broker_url.startswith("filesystem")
        assert Path(opts["data_folder_in"]) == (tmp_path / "broker" / "queue").resolve()
        assert Path(opts["control_folder"]).is_dir()
    else:
        assert opts["visibility_timeout"] == VISIBILITY_TIMEOUT_S
        assert VISIBILITY_TIMEOUT_S > 3600
