"""POST /api/v1/checkpoints under the upload size limit (the round trip and the other refusals
run with a real worker in tests/worker/test_init_from.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save as np_save

from tests.service.predict_helpers import UPLOAD_LIMIT

pytest_plugins = ["tests.service.fixtures_predict"]


def test_oversized_checkpoint_is_413_and_nothing_is_stored(pclient, db, psettings):
    payload = np_save(
        {"model.w": np.zeros(UPLOAD_LIMIT // 4 + 10, np.float32)}, metadata={"celif": "{}"}
    )
    assert len(payload) > UPLOAD_LIMIT
    r = pclient.post("/api/v1/checkpoints", files={"file": ("big.safetensors", payload)})
    assert r.status_code == 413, r.text
    assert str(UPLOAD_LIMIT) in r.json()["detail"]
    uploads = Path(psettings.storage_dir) / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
