"""Plain helpers shared by the test folders (no fixtures): polling and free TCP ports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str = "the condition",
    interval: float = 0.05,
) -> Any:
    """Poll until `predicate()` is truthy (returned) or fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto_server(
    host: str = "127.0.0.1", port: int | None = None, *, log: Any = None, timeout: float = 60
) -> tuple[str, Any]:
    """Start moto's standalone S3 API server (`python -m moto.server -H host -p port`) as a
    subprocess and wait until it answers; returns (endpoint URL, the Popen). `port` None: a free
    one. Stop it with `stop_process(proc)`; moto keeps its objects in memory, so a restart
    loses them (pause it with SIGSTOP/SIGCONT to make it unreachable without losing state)."""
    import subprocess
    import sys
    import urllib.request

    port = port or free_port()
    url = f"http://{host}:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
        start_new_session=True,
    )

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"moto server on {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(answers, timeout, f"moto server on {url}", 0.1)
    except BaseException:
        stop_process(proc)
        raise
    return url, proc


def stop_process(proc: Any, timeout: float = 10) -> None:
    """Terminate a subprocess we started (SIGCONT first, in case a test paused it)."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    except ProcessLookupError:
        pass


def create_bucket(endpoint_url: str, bucket: str, region: str = "us-east-1") -> None:
    """Create `bucket` on an S3 API server (moto accepts any credentials)."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=bucket)
