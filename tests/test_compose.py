"""docker-compose.yml parses and validates as Debian's docker-compose (1.29) reads it, the check
CI runs (.ci/run); no Docker engine needed. Skipped without the binary, failed instead under
CELIF_REQUIRE_COMPOSE=1 (CI installs it), so a broken compose file never passes as a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def require_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is not None:
        return binary
    reason = "needs the docker-compose binary (Debian: apt-get install docker-compose)"
    if os.environ.get("CELIF_REQUIRE_COMPOSE") == "1":
        pytest.fail(f"CELIF_REQUIRE_COMPOSE=1 but the test {reason}", pytrace=False)
    pytest.skip(reason)


def compose(*args: str) -> subprocess.CompletedProcess:
    # No CELIF_* / compose variables from the caller's environment: the file's own defaults.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELIF_", "COMPOSE_"))}
    return subprocess.run(
        [require_compose(), "-f", str(ROOT / "docker-compose.yml"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_is_valid():
    run = compose("config", "-q")
    assert run.returncode == 0, run.stderr


def test_the_compose_file_has_a_worker_per_device_kind_and_the_object_store():
    run = compose("config", "--services")
    assert run.returncode == 0, run.stderr
    services = set(run.stdout.split())
    assert {"api", "worker-gpu", "worker-cpu", "minio", "minio-init"} <= services, services
    config = compose("config").stdout
    assert "--queues" in config and "gpu,any" in config
    assert "CELIF_ARTIFACT_STORE: s3" in config


def test_a_missing_binary_is_a_skip_and_under_ci_a_failure(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CELIF_REQUIRE_COMPOSE", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_compose()
    monkeypatch.setenv("CELIF_REQUIRE_COMPOSE", "1")
    with pytest.raises(pytest.fail.Exception, match="CELIF_REQUIRE_COMPOSE=1"):
        require_compose()
