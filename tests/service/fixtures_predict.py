"""Fixtures of the predict, streams, datasets and dashboard tests, loaded by those modules with
`pytest_plugins` (the suite-wide conftest.py is another engineer's).

- `trained`: tiny models trained (or set up) once per session with celif_core's Trainer; each
  test registers one as a finished job of alice's (`predict_helpers.make_job`).
- `pserver` / `pclient`: the real app on this session's database with larger body limits (the
  suite-wide server keeps a 64 KiB body limit) and small predict/upload limits, so the limit
  refusals are cheap to provoke.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobstore.settings import Settings
from service.app import create_app
from tests.service.conftest import ServerThread
from tests.service.predict_helpers import (
    MNIST_DIR,
    PREDICT_LIMIT,
    SPECS,
    UPLOAD_LIMIT,
    Trained,
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Trained]:
    """One checkpoint per task, written by celif_core's Trainer (adding trains for real; the
    784-step MNIST and copy-memory models are checkpointed after setup to keep the suite fast)."""
    from celif_core.trainer import DataDirs, Trainer

    out: dict[str, Trained] = {}
    for name, spec in SPECS.items():
        directory = tmp_path_factory.mktemp(f"ckpt-{name}")
        trainer = Trainer(
            spec, checkpoint_dir=directory, data_dirs=DataDirs(mnist=MNIST_DIR, download=False)
        )
        trainer.setup()
        if name == "adding":
            result = trainer.train()
            info = result.checkpoints[-1] if result.checkpoints else trainer.save_checkpoint()
        else:
            info = trainer.save_checkpoint()
        out[name] = Trained(trainer.spec.to_dict(), Path(info.path), info.step)
    return out


@pytest.fixture(scope="module")
def psettings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "max_body_bytes": 32 * 1024**2,
            "max_predict_sequences": PREDICT_LIMIT,
            "max_upload_bytes": UPLOAD_LIMIT,
        }
    )


@pytest.fixture(scope="module")
def papp(psettings: Settings):
    return create_app(psettings)


@pytest.fixture(scope="module")
def pserver(papp) -> Iterator[ServerThread]:
    with ServerThread(papp) as srv:
        yield srv


@pytest.fixture
def pclient(pserver: ServerThread, tokens) -> Iterator[httpx.Client]:
    """Alice's client against the predict server."""
    with httpx.Client(
        base_url=pserver.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=120
    ) as c:
        yield c


@pytest.fixture
def pbob(pserver: ServerThread, tokens) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=pserver.url, headers={"Authorization": f"Bearer {tokens.bob}"}, timeout=60
    ) as c:
        yield c
