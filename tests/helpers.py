"""Plain helpers shared by the test folders (no fixtures): polling, free TCP ports, and a real
S3 API server (moto's standalone server) started as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# moto accepts any credentials; obstore and boto3 read these from the environment.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class S3Server:
    """A running S3 API server: its endpoint, its process, the bucket the tests use."""

    url: str
    proc: Any
    bucket: str

    def client(self):
        """A boto3 client (to look at or tamper with objects behind the service's back)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2")
        pages = pages.paginate(Bucket=self.bucket, Prefix=prefix)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The server unreachable (SIGSTOP: connections hang, nothing answers) without losing
        its objects (moto keeps them in memory); SIGCONT at the end, whatever happens."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


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
