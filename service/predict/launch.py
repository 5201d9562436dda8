"""The API in several processes on one port, for prediction traffic on a host with several cores.

    python -m service.predict.launch --processes 2 --host 0.0.0.0 --port 8000

Why not `uvicorn --workers N`: its processes share one listening socket, and the first to wake
accepts every connection that is waiting (measured: 16 clients connecting at once all landed in
one of two processes, which then served them alone at one process's throughput). Here each
process binds its own socket with `SO_REUSEPORT`, so the kernel spreads new connections over
the processes. The sockets are made with `IPPROTO_TCP` and `TCP_NODELAY`: asyncio only
disables Nagle's algorithm on sockets whose protocol says TCP, and without it a response
written in two parts (headers, body) waited for the client's delayed ACK (p50 48 ms instead
of 3 ms, measured).

Each process gets `CELIF_API_PROCESSES=N`, so its predict pool takes its share of the cores
(settings.api_processes). State kept in one process's memory stays there: streaming-predict
sessions (a stream's chunks must reach the process that opened it, so streaming clients need
one connection kept alive, or one process), and the token and lookup caches (each bounded by
its TTL, as with several replicas). The embedded worker of `celif serve` is not started here.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def bind_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to (host, port) that other processes of this user may bind too;
    listening unless `listen` is false."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    return sock


def serve_one(host: str, port: int, log_level: str) -> None:
    """One API process on its own SO_REUSEPORT socket (what each child runs)."""
    import uvicorn

    sock = bind_socket(host, port)
    config = uvicorn.Config("service.app:create_app", factory=True, log_level=log_level)
    uvicorn.Server(config).run(sockets=[sock])


def child_command(host: str, port: int, log_level: str) -> list[str]:
    return [sys.executable, "-m", "service.predict.launch", "--child", "--host", host, "--port", str(port), "--log-level", log_level]  # fmt: skip


def supervise(children: list[subprocess.Popen]) -> int:
    """Wait until a signal or a child's exit, then stop every child (SIGTERM: a graceful
    shutdown, even for a child that also had the terminal's SIGINT; SIGKILL after 30 s); the
    exit status is the first child's that ended on its own, else 0."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    while not stopping:
        ended = [c for c in children if c.poll() is not None]
        if ended:
            status = ended[0].returncode or 1
            print(f"API process {ended[0].pid} exited ({ended[0].returncode}); stopping the others", file=sys.stderr)  # fmt: skip
            break
        time.sleep(0.2)
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="default: cores")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="info")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        try:
            serve_one(args.host, args.port, args.log_level)
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on
            pass
        return 0
    if args.processes < 1:
        p.error("--processes must be at least 1")
    env = dict(os.environ, CELIF_API_PROCESSES=str(args.processes))
    # Bound here first (not listening: it takes no connection), so a port in use fails now,
    # once, not in N children.
    probe = bind_socket(args.host, args.port, listen=False)
    try:
        children = [
            subprocess.Popen(child_command(args.host, args.port, args.log_level), env=env)
            for _ in range(args.processes)
        ]
    finally:
        probe.close()
    return supervise(children)


if __name__ == "__main__":
    sys.exit(main())
