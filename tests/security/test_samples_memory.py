"""`/samples` builds only the rows asked for: the job's own split rows for datasets and MNIST
(checked against celif_core's tasks), and bounded memory on a job with large eval sets (the
API's peak RSS, reset through /proc/self/clear_refs, measured around the request)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from sqlalchemy import select

from celif_core.spec import validate_spec
from jobstore.db.models import Job, User
from jobstore.db.session import session_scope


def _store_job(db_url: str, spec: dict) -> str:
    with session_scope(db_url) as session:
        alice = session.scalars(select(User).where(User.name == "alice")).one()
        job = Job(
            owner_id=alice.id,
            task_name=spec["task"]["name"],
            neuron="celif",
            spec=spec,
            status="succeeded",
            max_steps=spec["training"]["max_steps"],
        )
        session.add(job)
        session.flush()
        return job.id


def _rss_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def test_dataset_samples_are_the_jobs_split_rows(pclient, db, psettings):
    from celif_core.tasks import DatasetTask

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 7, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=60)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y)
    ds = pclient.post("/api/v1/datasets", files={"file": ("d.npz", buf.getvalue())}).json()
    spec = pclient.post(
        "/api/v1/jobs:validate",
        json={"task": {"name": "dataset", "params": {"dataset_id": ds["id"]}}},
    ).json()["spec"]
    job = _store_job(db, spec)
    task = DatasetTask(
        psettings.datasets_dir,
        dataset_id=ds["id"],
        kind="classification",
        seq_len=7,
        input_size=3,
        output_size=3,
    )
    for split in ("test", "val"):
        want_x, want_y = next(iter(task.eval_batches(split, 64)))
        r = pclient.get(f"/api/v1/jobs/{job}/samples", params={"split": split, "n": 3, "offset": 2})
        assert r.status_code == 200, r.text
        got = r.json()
        np.testing.assert_allclose(got["inputs"], want_x[2:5].numpy(), atol=1e-4)
        assert got["targets"] == want_y[2:5].tolist()


def test_samples_of_a_job_with_large_eval_sets_use_little_memory(pclient, db):
    # 2 x 2000 sequences of T=4000: 128 MiB of eval sets, of which 2 rows are asked for.
    spec = validate_spec(
        {
            "task": {
                "name": "adding",
                "params": {"seq_len": 4000, "val_size": 2000, "test_size": 2000},
            },
            "model": {"hidden": [8], "te_length": 4000},
        },
        max_activation_bytes=2**62,
    ).to_dict()
    job = _store_job(db, spec)
    small = {**spec, "task": {"name": "adding", "params": {**spec["task"]["params"]}}}
    small["task"]["params"].update(seq_len=20, val_size=100, test_size=100)
    warm = _store_job(db, small)
    assert pclient.get(f"/api/v1/jobs/{warm}/samples", params={"n": 1}).status_code == 200
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts from now
    r = pclient.get(f"/api/v1/jobs/{job}/samples", params={"n": 2, "split": "val"})
    peak = _rss_kib("VmHWM")
    assert r.status_code == 200, r.text
    assert r.json()["shape"] == [2, 4000, 2]
    grew_mib = (peak - before) / 1024
    print(f"samples n=2 of a job with 128 MiB of eval sets: peak RSS +{grew_mib:.1f} MiB")
    assert grew_mib < 24
