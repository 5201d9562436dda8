"""Suite-wide setup: MNIST, and a real S3 API server (`s3_server`) for the object-store tests.

The directory the caller gave in CELIF_MNIST_DIR (scripts/dev.sh: ../shared/data/mnist) is kept
as `REAL_MNIST_DIR` for the tests that need the full set (`full_mnist_dir`); every other test,
and every subprocess the suite starts, reads a small generated set in the same IDX format
(`tests/mnist_fixture.py`), so the suite passes on a fresh clone without the data.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import S3Server, create_bucket, start_moto_server, stop_process
from tests.mnist_fixture import require_full_mnist, write_mnist_fixture

REPO = Path(__file__).resolve().parents[1]

REAL_MNIST_DIR = os.environ.get("CELIF_MNIST_DIR") or str(REPO.parent / "shared" / "data" / "mnist")
SMALL_MNIST_DIR = Path(tempfile.mkdtemp(prefix="celif-test-mnist-"))
write_mnist_fixture(SMALL_MNIST_DIR)
os.environ["CELIF_MNIST_DIR"] = str(SMALL_MNIST_DIR)


def pytest_unconfigure(config):
    shutil.rmtree(SMALL_MNIST_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The small generated MNIST-format set (always present)."""
    return SMALL_MNIST_DIR


@pytest.fixture(scope="session")
def full_mnist_dir() -> Path:
    """The real MNIST set; skipped when absent (failed under CELIF_REQUIRE_MNIST=1)."""
    return require_full_mnist(REAL_MNIST_DIR)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on loopback with a bucket (`S3Server`); stopped at the end.
    Tests keep to prefixes of their own. Production uses a real store (docs/deployment.md)."""
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("ab")
    url, proc = start_moto_server("127.0.0.1", log=log)
    try:
        server = S3Server(url, proc, "celif-test-artifacts")
        create_bucket(url, server.bucket)
        yield server
    finally:
        stop_process(proc)
        log.close()
