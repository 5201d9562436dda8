"""Streaming predict: state carried across chunks; after 4 chunks the prediction equals the
one-shot prediction of the whole sequence (classification, regression, per-step sequence)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.predict_helpers import make_job

pytest_plugins = ["tests.service.fixtures_predict"]


def _inputs(pclient, job_id: str, task: str, n: int = 2) -> np.ndarray:
    if task == "adding":
        rng = np.random.default_rng(1)
        x = np.stack([rng.random((n, 24)), np.zeros((n, 24))], -1)
        x[:, [2, 20], 1] = 1.0
        return x.astype(np.float32)
    sample = pclient.get(f"/api/v1/jobs/{job_id}/samples", params={"n": n}).json()
    x = np.asarray(sample["inputs"], dtype=np.float32)
    return x[:, :, None] if x.ndim == 2 else x


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key in ("class", "classes"):
            assert a[key] == b[key]
        else:
            np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.parametrize("task", ["seq_mnist", "adding", "copy_memory"])
def test_four_chunks_equal_one_shot(pclient, db, psettings, trained, task):
    job_id = make_job(db, psettings.storage_dir, trained[task])
    x = _inputs(pclient, job_id, task)
    one = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": x.tolist()})
    assert one.status_code == 200, one.text

    r = pclient.post(f"/api/v1/jobs/{job_id}/streams", json={"checkpoint": "best"})
    assert r.status_code == 201, r.text
    stream = r.json()
    sid = stream["stream_id"]
    assert stream["checkpoint"]["sha256"] == one.json()["checkpoint"]["sha256"]
    cuts = np.linspace(0, x.shape[1], 5).astype(int)
    results = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        chunk = x[:, a:b]
        payload = chunk[:, :, 0].tolist() if chunk.shape[2] == 1 else chunk.tolist()
        c = pclient.post(f"/api/v1/jobs/{job_id}/streams/{sid}/chunks", json={"inputs": payload})
        assert c.status_code == 200, c.text
        results.append(c.json())
    assert [r["steps"] for r in results] == cuts[1:].tolist()
    last = results[-1]
    assert last["kind"] == one.json()["kind"]
    for got, want in zip(last["predictions"], one.json()["predictions"], strict=True):
        _same(got, want)
    if task != "adding":  # fixed-length tasks say when the sequence is complete
        assert [r["complete"] for r in results] == [False, False, False, True]

    assert pclient.delete(f"/api/v1/jobs/{job_id}/streams/{sid}").status_code == 204
    gone = pclient.post(f"/api/v1/jobs/{job_id}/streams/{sid}/chunks", json={"inputs": payload})
    assert gone.status_code == 404
    assert pclient.delete(f"/api/v1/jobs/{job_id}/streams/{sid}").status_code == 404


def test_stream_refusals(pclient, pbob, db, psettings, trained):
    job_id = make_job(db, psettings.storage_dir, trained["seq_mnist"])
    sid = pclient.post(f"/api/v1/jobs/{job_id}/streams").json()["stream_id"]
    url = f"/api/v1/jobs/{job_id}/streams/{sid}/chunks"
    ok = pclient.post(url, json={"inputs": np.zeros((2, 700)).tolist()})
    assert ok.status_code == 200 and ok.json()["complete"] is False
    # N is fixed by the first chunk.
    r = pclient.post(url, json={"inputs": np.zeros((3, 10)).tolist()})
    assert r.status_code == 422 and "N=2" in r.json()["detail"][0]["msg"]
    # Past the task's T=784.
    r = pclient.post(url, json={"inputs": np.zeros((2, 100)).tolist()})
    assert r.status_code == 422 and "784" in r.json()["detail"][0]["msg"]
    # Bad shapes and NaN name the chunk shape.
    r = pclient.post(url, json={"inputs": np.zeros((2, 10, 3)).tolist()})
    assert r.status_code == 422 and "[N, t, F=1]" in r.json()["detail"][0]["msg"]
    r = pclient.post(
        url,
        content='{"inputs": [[0.1, NaN], [0.2, 0.3]]}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "NaN" in r.json()["detail"][0]["msg"]
    # The stream is still usable after refusals: state unchanged.
    ok = pclient.post(url, json={"inputs": np.zeros((2, 84)).tolist()})
    assert ok.status_code == 200 and ok.json()["steps"] == 784 and ok.json()["complete"] is True
    # Someone else's stream or job: 404.
    assert pbob.post(url, json={"inputs": np.zeros((2, 1)).tolist()}).status_code == 404
    assert pbob.delete(f"/api/v1/jobs/{job_id}/streams/{sid}").status_code == 404
    assert pbob.post(f"/api/v1/jobs/{job_id}/streams").status_code == 404
    assert (
        pclient.post(
            f"/api/v1/jobs/{job_id}/streams/nope/chunks", json={"inputs": [[0.0]]}
        ).status_code
        == 404
    )


def test_stream_store_ttl_and_limit():
    from service.inference import StreamLimit, StreamStore

    store = StreamStore(ttl_s=60, max_streams=2)
    a = store.open(owner_id="u", job_id="j", loaded=None, max_steps=None)
    store.open(owner_id="u", job_id="j", loaded=None, max_steps=None)
    with pytest.raises(StreamLimit):
        store.open(owner_id="u", job_id="j", loaded=None, max_steps=None)
    assert store.get(a.id, owner_id="v", job_id="j") is None  # not the owner
    a.last_used -= 120  # idle past the TTL
    store.open(owner_id="u", job_id="j", loaded=None, max_steps=None)
    assert store.get(a.id, owner_id="u", job_id="j") is None and len(store) == 2
