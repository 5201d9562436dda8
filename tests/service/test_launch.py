"""`service.predict.launch`: the API in several processes on one port (SO_REUSEPORT), each
with its share of the cores for its predict pool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from jobstore.settings import Settings
from service.predict.launch import bind_socket
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def test_the_sockets_are_tcp_with_nodelay_and_shareable():
    port = free_port()
    a = bind_socket("127.0.0.1", port)
    b = bind_socket("127.0.0.1", port)  # a second process's socket on the same port
    try:
        for s in (a, b):
            # asyncio only turns Nagle off on sockets whose protocol says TCP.
            assert s.proto == socket.IPPROTO_TCP
            assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    finally:
        a.close()
        b.close()


def test_api_processes_divide_the_cores_of_the_predict_pool(tmp_path):
    cores = len(os.sched_getaffinity(0))
    one = Settings(_env_file=None, data_dir=tmp_path)
    assert one.api_processes == 1
    workers, threads = one.predict_parallelism
    assert workers * threads == cores
    many = Settings(_env_file=None, data_dir=tmp_path, api_processes=cores)
    assert many.predict_parallelism == (1, 1)  # one core each
    more = Settings(_env_file=None, data_dir=tmp_path, api_processes=4 * cores)
    assert more.predict_parallelism == (1, 1)  # never less than one


def _children(pid: int) -> list[int]:
    return [
        int(c) for t in Path(f"/proc/{pid}/task").glob("*") for c in (t / "children").read_text().split()
    ]  # fmt: skip


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def test_two_processes_share_the_port_and_the_connections(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
    env.update(PYTHONPATH=str(REPO), CELIF_DATA_DIR=str(tmp_path / "data"))
    cmd = [sys.executable, "-m", "service.predict.launch", "--processes", "2", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    clients: list[httpx.Client] = []
    children: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 120, "the API on its port")
        children = wait_for(lambda: len(_children(proc.pid)) == 2 and _children(proc.pid), 60)
        # Both processes listen (each its own socket) before the connections are made.
        wait_for(lambda: all(_sockets(c) >= 1 for c in children), 60, "both processes listening")
        baseline = {c: _sockets(c) for c in children}
        # 32 connections held open: the kernel hashes each to one of the two sockets, so both
        # processes hold some (all 32 in one process: probability 2**-31).
        for _ in range(32):
            c = httpx.Client(base_url=url, timeout=30)
            assert c.get("/healthz").status_code == 200
            clients.append(c)
        held = {c: _sockets(c) - baseline[c] for c in children}
        assert all(n >= 1 for n in held.values()), held
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # Every API process stopped with the launcher (and was reaped by it).
    assert not any(Path(f"/proc/{c}").exists() for c in children)
