"""POST /api/v1/datasets: valid NPZ stored atomically with its row; malformed uploads refused
with the reason and nothing stored; an uploaded dataset trains a job end to end (real worker)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from tests.service.predict_helpers import UPLOAD_LIMIT, EmbeddedServer, wait_until

pytest_plugins = ["tests.service.fixtures_predict"]


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _upload(client, payload: bytes, *, name: str | None = "toy", kind: str | None = None):
    data = {}
    if name is not None:
        data["name"] = name
    if kind is not None:
        data["kind"] = kind
    return client.post(
        "/api/v1/datasets",
        files={"file": ("toy.npz", payload, "application/octet-stream")},
        data=data,
    )


def _stored(psettings) -> list[Path]:
    root = Path(psettings.datasets_dir)
    return sorted(root.iterdir()) if root.exists() else []


def toy_classification(n: int = 40, t: int = 12, f: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    y = (x[:, :, 0].mean(1) > 0).astype(np.int64)
    return x, y


def test_upload_list_get(pclient, pbob, db, psettings):
    for p in _stored(psettings):
        p.unlink()
    x, y = toy_classification()
    r = _upload(pclient, npz(x=x, y=y))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["num_sequences"], ds["seq_len"], ds["input_size"]) == (40, 12, 3)
    assert (ds["kind"], ds["target"], ds["output_size"]) == ("classification", "per_sequence", 2)
    stored = _stored(psettings)
    assert [p.name for p in stored] == [f"{ds['id']}.npz"]
    with np.load(stored[0], allow_pickle=False) as back:
        np.testing.assert_array_equal(back["x"], x)

    # Regression, per-step targets, stated kind.
    yr = x.sum(-1).astype(np.float64)  # [N, T]
    r = _upload(pclient, npz(x=x, y=yr), name="per-step")
    assert r.status_code == 201, r.text
    assert (r.json()["kind"], r.json()["target"], r.json()["output_size"]) == (
        "regression",
        "per_step",
        1,
    )
    r = _upload(pclient, npz(x=x, y=y), kind="regression")
    assert r.status_code == 201 and r.json()["kind"] == "regression"

    listed = pclient.get("/api/v1/datasets").json()["items"]
    assert len(listed) == 3 and {d["name"] for d in listed} == {"toy", "per-step"}
    assert pclient.get(f"/api/v1/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]
    assert pbob.get(f"/api/v1/datasets/{ds['id']}").status_code == 404
    assert pbob.get("/api/v1/datasets").json()["items"] == []


def _ragged_npz() -> bytes:
    buf = io.BytesIO()
    ragged = np.empty(10, dtype=object)
    for i in range(10):
        ragged[i] = np.zeros((5 + i, 1), np.float32)
    np.savez(buf, x=ragged, y=np.zeros(10, np.int64))
    return buf.getvalue()


def _bomb_npz() -> bytes:
    """A compressed NPZ whose x would take far more memory than the upload limit."""
    buf = io.BytesIO()
    x = np.zeros((400, 1000, 4), np.float32)  # 6.4 MB of zeros compress to a few KB
    np.savez_compressed(buf, x=x, y=np.zeros(400, np.int64))
    return buf.getvalue()


x0, y0 = toy_classification()
nan_x = x0.copy()
nan_x[3, 4, 1] = np.nan
MALFORMED = {
    "not_a_zip": (b"hello, not an npz", "not an NPZ"),
    "empty_file": (b"", "empty"),
    "missing_y": (npz(x=x0), "missing 'y'"),
    "wrong_keys": (npz(inputs=x0, labels=y0), "exactly the arrays 'x'"),
    "extra_key": (npz(x=x0, y=y0, z=y0), "unexpected 'z'"),
    "ragged_object_array": (_ragged_npz(), "object array"),
    "nan_in_x": (npz(x=nan_x, y=y0), "NaN"),
    "inf_in_y": (npz(x=x0, y=np.where(np.arange(40) == 5, np.inf, 1.0)), "NaN or infinite"),
    "int_x": (npz(x=(x0 * 10).astype(np.int32), y=y0), "x must be a float array"),
    "x_2d": (npz(x=x0[:, :, 0], y=y0), "x must have shape [N, T, F]"),
    "y_wrong_length": (npz(x=x0, y=y0[:30]), "y must have shape [N=40]"),
    "y_strings": (npz(x=x0, y=np.array(["a"] * 40)), "y must be an integer array"),
    "too_few_sequences": (npz(x=x0[:5], y=y0[:5]), "at least 10"),
    "negative_label": (npz(x=x0, y=y0 - 1), ">= 0"),
    "decompression_bomb": (_bomb_npz(), "over the limit"),
    "float_labels_as_classification": (npz(x=x0, y=y0.astype(np.float32)), "integer class labels"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_uploads_are_refused_and_leave_nothing(pclient, db, psettings, case):
    for p in _stored(psettings):
        p.unlink()
    payload, reason = MALFORMED[case]
    kind = "classification" if case == "float_labels_as_classification" else None
    r = _upload(pclient, payload, kind=kind)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert reason in err["msg"], err["msg"]
    assert err["loc"] == ["body", "file"]
    assert _stored(psettings) == []  # no file, not even a temp file
    assert pclient.get("/api/v1/datasets").json()["items"] == []  # no row


# The cases that are rules on the arrays (not on the upload: its size, an empty body, a bomb).
RULE_CASES = sorted(set(MALFORMED) - {"empty_file", "decompression_bomb"})


@pytest.mark.parametrize("case", RULE_CASES)
def test_the_training_loader_refuses_what_the_upload_refuses(tmp_path, case):
    # One set of rules (celif_core.dataset_rules) for the upload and for the training side.
    from celif_core.errors import DataError
    from celif_core.tasks.dataset import dataset_facts
    from service.datasets.validate import InvalidDataset, inspect_npz

    payload, reason = MALFORMED[case]
    kind = "classification" if case == "float_labels_as_classification" else "auto"
    path = tmp_path / "case.npz"
    path.write_bytes(payload)
    with pytest.raises(InvalidDataset, match=re.escape(reason)):
        inspect_npz(path, kind=kind, max_array_bytes=2**30)
    if kind == "auto":  # the loader infers the kind
        with pytest.raises(DataError) as refused:
            dataset_facts(path)
        assert reason.lower() in str(refused.value).lower()


@pytest.mark.parametrize(
    "y",
    [y0, y0 * 0, (y0 * 7).astype(np.uint8), x0.sum(-1), x0[:, 0, 0].astype(np.float64)],
    ids=["labels", "one_class", "uint8_labels", "per_step_real", "real"],
)
def test_the_training_loader_reads_the_facts_the_upload_stores(tmp_path, y):
    from celif_core.tasks.dataset import dataset_facts
    from service.datasets.validate import inspect_npz

    path = tmp_path / "ok.npz"
    path.write_bytes(npz(x=x0, y=y))
    stored = inspect_npz(path, max_array_bytes=2**30)
    assert dataset_facts(path) == stored.resolver_facts()
    assert stored.output_size == (max(int(y.max()) + 1, 2) if y.dtype.kind in "iu" else 1)


def test_too_big_upload_is_413_and_leaves_nothing(pclient, db, psettings):
    for p in _stored(psettings):
        p.unlink()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 200, 2)).astype(np.float32)  # 160 kB of noise > 200 kB with y?
    x = np.concatenate([x, x])  # 320 kB: over UPLOAD_LIMIT
    payload = npz(x=x, y=np.zeros(200, np.int64))
    assert len(payload) > UPLOAD_LIMIT
    r = _upload(pclient, payload)
    assert r.status_code == 413, r.text
    assert str(UPLOAD_LIMIT) in r.json()["detail"]
    assert _stored(psettings) == []
    assert pclient.get("/api/v1/datasets").json()["items"] == []


def test_too_big_upload_without_content_length_is_refused_by_the_service(tmp_path):
    """The service's own streaming limit (behind the middleware's Content-Length check)."""
    from service.errors import PayloadTooLarge
    from service.uploads import copy_limited, staged_upload

    with pytest.raises(PayloadTooLarge, match="1024"):
        copy_limited(io.BytesIO(b"x" * 5000), io.BytesIO(), 1024)
    with pytest.raises(PayloadTooLarge):  # staged: the temp file is gone too
        with staged_upload(io.BytesIO(b"x" * 5000), tmp_path, 1024):
            pass
    assert list(tmp_path.iterdir()) == []


def test_dataset_facts_resolver(pclient, db, psettings, tokens):
    from sqlalchemy import select

    from celif_core.spec import validate_spec
    from jobstore.db.models import User
    from jobstore.db.session import session_scope
    from service.datasets.service import dataset_facts

    x, y = toy_classification()
    ds = _upload(pclient, npz(x=x, y=y)).json()
    with session_scope(db) as session:
        alice = session.scalars(select(User).where(User.name == "alice")).one()
        bob = session.scalars(select(User).where(User.name == "bob")).one()
        facts = dataset_facts(session, alice, ds["id"])
        assert facts["seq_len"] == 12 and facts["kind"] == "classification"
        assert dataset_facts(session, bob, ds["id"]) is None
        spec = validate_spec(
            {
                "task": {"name": "dataset", "params": {"dataset_id": ds["id"]}},
                "model": {"hidden": [8]},
            },
            datasets=lambda i: dataset_facts(session, alice, i),
        )
        assert (spec.seq_len, spec.input_size, spec.output_size, spec.kind) == (
            12,
            3,
            2,
            "classification",
        )


def test_uploaded_dataset_trains_end_to_end(tmp_path):
    """Upload -> submit a `dataset` job -> the real worker (celif serve) trains it -> predict."""
    x, y = toy_classification(n=120, t=16, f=2, seed=3)
    with EmbeddedServer(tmp_path / "data") as srv, srv.client() as c:
        r = _upload(c, npz(x=x, y=y), name="toy-e2e")
        assert r.status_code == 201, r.text
        ds = r.json()
        spec = {
            "name": "on-upload",
            "task": {"name": "dataset", "params": {"dataset_id": ds["id"]}},
            "model": {"neuron": "celif", "hidden": [16]},
            "training": {
                "max_steps": 40,
                "batch_size": 16,
                "eval_every": 20,
                "checkpoint_every": 20,
                "lr": 0.01,
                "device": "cpu",
            },
        }
        r = c.post("/api/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        job = r.json()
        assert job["spec"]["task"]["params"]["seq_len"] == 16
        assert job["spec"]["task"]["params"]["kind"] == "classification"

        def finished():
            j = c.get(f"/api/v1/jobs/{job['id']}").json()
            return j if j["status"] in ("succeeded", "failed", "cancelled") else None

        done = wait_until(finished, 300, "the dataset job to finish", 0.5)
        assert done["status"] == "succeeded", (done.get("error"), srv.output[-3000:])
        metrics = c.get(f"/api/v1/jobs/{job['id']}/metrics").json()["items"]
        assert any(p["split"] == "val" for p in metrics)
        r = c.post(f"/api/v1/jobs/{job['id']}/predict", json={"inputs": x[:4].tolist()})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 4 and "class" in r.json()["predictions"][0]
        bad = c.post(f"/api/v1/jobs/{job['id']}/predict", json={"inputs": x[:4, :10].tolist()})
        assert bad.status_code == 422 and "[N, T=16, F=2]" in bad.json()["detail"][0]["msg"]
