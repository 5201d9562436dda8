"""POST /api/v1/jobs/{id}/predict: equals celif_core run locally on the downloaded checkpoint;
every bad payload is a 422 naming the expected shape; models are cached; TE similarity; samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from celif_core.checkpoint import load_model
from tests.service.predict_helpers import PREDICT_LIMIT, make_job

pytest_plugins = ["tests.service.fixtures_predict"]

MNIST_SHAPE = "[N, T=784, F=1]"


def _job(db, psettings, trained, name, **kw) -> str:
    return make_job(db, psettings.storage_dir, trained[name], **kw)


def _local(client, job_id, tmp_path):
    """Download the best checkpoint through the API and load it with celif_core."""
    r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/best")
    assert r.status_code == 200, r.text
    path = tmp_path / "best.safetensors"
    path.write_bytes(r.content)
    model, spec, _ = load_model(path)
    return model, spec


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mnist_predict_equals_local_run(pclient, db, psettings, trained, tmp_path):
    job_id = _job(db, psettings, trained, "seq_mnist")
    samples = pclient.get(f"/api/v1/jobs/{job_id}/samples", params={"split": "test", "n": 3})
    assert samples.status_code == 200, samples.text
    sample = samples.json()
    assert sample["shape"] == [3, 784, 1] and sample["targets"] == [7, 2, 1]  # MNIST test set
    inputs = sample["inputs"]  # [N, T] since F=1

    r = pclient.post(
        f"/api/v1/jobs/{job_id}/predict",
        json={
            "inputs": inputs,
            "return": ["probabilities", "firing_rates", "spikes"],
            "spikes_layer": 1,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "classification" and len(body["predictions"]) == 3

    model, spec = _local(pclient, job_id, tmp_path)
    x = torch.tensor(np.asarray(inputs, dtype=np.float32)[:, :, None])
    with torch.inference_mode():
        out = model.run(x, record_spikes=True)
    probs = _softmax(out.output.double().numpy())
    for i, pred in enumerate(body["predictions"]):
        assert pred["class"] == int(probs[i].argmax())
        np.testing.assert_allclose(pred["probabilities"], probs[i], atol=1e-5)
    np.testing.assert_allclose(body["firing_rates"], out.firing_rates, atol=1e-6)
    assert len(body["firing_rates"]) == 2
    spikes = out.spikes[1].numpy()  # [N, T, 24]
    assert body["spikes"]["layer"] == 1
    for i, raster in enumerate(body["spikes"]["rasters"]):
        assert (raster["steps"], raster["neurons"]) == (784, 24)
        t, n = np.nonzero(spikes[i])
        assert raster["t"] == t.tolist() and raster["neuron"] == n.tolist()

    # [N, T, 1] is accepted as well as [N, T]; without "spikes" none are returned.
    r3 = pclient.post(
        f"/api/v1/jobs/{job_id}/predict",
        json={"inputs": np.asarray(inputs)[:1, :, None].tolist(), "checkpoint": "latest"},
    )
    assert r3.status_code == 200, r3.text
    assert r3.json()["spikes"] is None
    np.testing.assert_allclose(r3.json()["predictions"][0]["probabilities"], probs[0], atol=1e-5)


def test_regression_and_sequence_predict_equal_local_run(pclient, db, psettings, trained, tmp_path):
    rng = np.random.default_rng(0)
    # Adding: regression, one value per sequence; T is free (any length up to the TE table).
    job_id = _job(db, psettings, trained, "adding")
    x = np.stack([rng.random((5, 24)), np.zeros((5, 24))], -1).astype(np.float32)
    x[:, [3, 17], 1] = 1.0
    r = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    model, _ = _local(pclient, job_id, tmp_path)
    with torch.inference_mode():
        want = model(torch.tensor(x)).numpy()[:, 0]
    got = [p["value"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, want, atol=1e-5)
    shorter = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": x[:, :10].tolist()})
    assert shorter.status_code == 200, shorter.text

    # Copy memory: a class at every step.
    job_id = _job(db, psettings, trained, "copy_memory")
    sample = pclient.get(f"/api/v1/jobs/{job_id}/samples", params={"n": 2}).json()
    assert sample["shape"] == [2, 28, 10]
    r = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": sample["inputs"]})
    assert r.status_code == 200, r.text
    model, _ = _local(pclient, job_id, tmp_path)
    with torch.inference_mode():
        out = model(torch.tensor(sample["inputs"], dtype=torch.float32)).numpy()
    for i, pred in enumerate(r.json()["predictions"]):
        assert pred["classes"] == out[i].argmax(-1).tolist()
        np.testing.assert_allclose(pred["probabilities"], _softmax(out[i]), atol=1e-4)


BAD_INPUTS = {
    "wrong_T": lambda: np.zeros((2, 100)).tolist(),
    "wrong_F": lambda: np.zeros((1, 784, 2)).tolist(),
    "one_dimensional": lambda: [0.0] * 784,
    "four_dimensional": lambda: np.zeros((1, 784, 1, 1)).tolist(),
    "ragged": lambda: [[0.0] * 784, [0.0] * 783],
    "strings": lambda: [["a"] * 784],
    "nulls": lambda: [[None] * 784],
    "empty": lambda: [],
    "scalar": lambda: 3.0,
    "too_many": lambda: np.zeros((PREDICT_LIMIT + 1, 784)).tolist(),
    "float32_overflow": lambda: [[1e39] * 784],
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_422_naming_the_shape(pclient, db, psettings, trained, case):
    job_id = _job(db, psettings, trained, "seq_mnist")
    r = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": BAD_INPUTS[case]()})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "inputs"]
    assert MNIST_SHAPE in err["msg"], err["msg"]
    assert f"N <= {PREDICT_LIMIT}" in err["msg"], err["msg"]
    if case == "too_many":
        assert f"N={PREDICT_LIMIT + 1}" in err["msg"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_422(pclient, db, psettings, trained, token):
    job_id = _job(db, psettings, trained, "seq_mnist")
    row = ", ".join(["0.5"] * 783 + [token])
    r = pclient.post(
        f"/api/v1/jobs/{job_id}/predict",
        content=f'{{"inputs": [[{row}]]}}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    msg = r.json()["detail"][0]["msg"]
    assert "NaN or infinite" in msg and MNIST_SHAPE in msg


def test_other_bad_requests(pclient, pbob, db, psettings, trained):
    job_id = _job(db, psettings, trained, "seq_mnist")
    zeros = np.zeros((1, 784)).tolist()
    url = f"/api/v1/jobs/{job_id}/predict"
    r = pclient.post(url, json={"inputs": zeros, "return": ["spikes"], "spikes_layer": 5})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "spikes_layer"]
    r = pclient.post(url, json={"inputs": zeros, "return": ["everything"]})
    assert r.status_code == 422
    r = pclient.post(url, json={"inputs": zeros, "checkpoint": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert pclient.post(url, json={}).status_code == 422
    # Another user's job does not exist for them; no token is 401.
    assert pbob.post(url, json={"inputs": zeros}).status_code == 404
    assert pbob.get(f"/api/v1/jobs/{job_id}/samples").status_code == 404
    import httpx

    assert httpx.post(pclient.base_url.join(url), json={"inputs": zeros}).status_code == 401
    # A job without a checkpoint yet.
    bare = _job(db, psettings, trained, "seq_mnist", with_checkpoint=False)
    r = pclient.post(f"/api/v1/jobs/{bare}/predict", json={"inputs": zeros})
    assert r.status_code == 404 and "checkpoint" in r.json()["detail"]


def test_model_cache_reuses_loaded_model(pclient, papp, db, psettings, trained):
    job_id = _job(db, psettings, trained, "adding")
    x = np.zeros((1, 24, 2)).tolist()
    pclient.get("/healthz")
    if hasattr(papp.state, "inference_runtime"):
        papp.state.inference_runtime.cache.clear()  # earlier tests loaded the same checkpoint
    first = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": x}).json()
    second = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": x}).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["predictions"] == second["predictions"]
    cache = papp.state.inference_runtime.cache
    assert first["checkpoint"]["sha256"] in cache
    assert len(cache) <= psettings.model_cache_size
    # A second job with the same checkpoint bytes shares the cache entry (keyed by sha256).
    other = _job(db, psettings, trained, "adding")
    third = pclient.post(f"/api/v1/jobs/{other}/predict", json={"inputs": x}).json()
    assert third["cached"] is True


def test_model_cache_is_lru_bounded():
    from service.inference import ModelCache

    loads: list[str] = []

    class _M:
        def eval(self):
            return self

    def loader(path):
        loads.append(str(path))
        from celif_core.spec import validate_spec

        return _M(), validate_spec({"task": {"name": "adding"}}), {}

    cache = ModelCache(2, loader=loader)
    cache.get("a", "pa")
    cache.get("b", "pb")
    cache.get("a", "pa")  # a is now the most recent
    cache.get("c", "pc")  # evicts b
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.get("b", "pb")
    assert loads == ["pa", "pb", "pc", "pb"] and len(cache) == 2


def test_te_similarity(pclient, db, psettings, trained, tmp_path):
    job_id = _job(db, psettings, trained, "adding")
    r = pclient.get(f"/api/v1/jobs/{job_id}/te_similarity", params={"layer": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    m = np.asarray(body["matrix"])
    assert m.shape == (24, 24) and body["stride"] == 1 and body["neurons"] == 16
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-3)
    np.testing.assert_allclose(m, m.T, atol=1e-4)
    model, _ = _local(pclient, job_id, tmp_path)
    te = dict(model.named_parameters())[body["parameter"]].detach().numpy()[:24, :16]
    unit = te / np.linalg.norm(te, axis=1, keepdims=True)
    np.testing.assert_allclose(m, unit @ unit.T, atol=1e-3)

    png = pclient.get(f"/api/v1/jobs/{job_id}/te_similarity.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"

    # MNIST: T=784 is pooled to at most 256 rows.
    mnist = _job(db, psettings, trained, "seq_mnist")
    body = pclient.get(f"/api/v1/jobs/{mnist}/te_similarity").json()
    assert body["stride"] == 4 and len(body["matrix"]) == 196

    # A LIF job has no TE table.
    lif = _job(db, psettings, trained, "copy_memory")
    r = pclient.get(f"/api/v1/jobs/{lif}/te_similarity")
    assert r.status_code == 404 and "TE" in r.json()["detail"]
    assert (
        pclient.get(f"/api/v1/jobs/{job_id}/te_similarity", params={"layer": 7}).status_code == 422
    )


def test_task_samples(pclient):
    r = pclient.get("/api/v1/tasks/seq_mnist/samples", params={"n": 2, "offset": 1})
    assert r.status_code == 200, r.text
    assert r.json()["targets"] == [2, 1] and r.json()["shape"] == [2, 784, 1]
    r = pclient.get("/api/v1/tasks/adding/samples", params={"n": 1})
    assert r.status_code == 200 and r.json()["shape"] == [1, 100, 2]
    assert pclient.get("/api/v1/tasks/nope/samples").status_code == 404
    assert pclient.get("/api/v1/tasks/seq_mnist/samples", params={"n": 1000}).status_code == 422


def test_openapi_lists_the_routes(pclient):
    paths = pclient.get("/openapi.json").json()["paths"]
    for p in (
        "/api/v1/jobs/{job_id}/predict",
        "/api/v1/jobs/{job_id}/streams",
        "/api/v1/jobs/{job_id}/streams/{stream_id}/chunks",
        "/api/v1/jobs/{job_id}/te_similarity.png",
        "/api/v1/datasets",
    ):
        assert p in paths, p
    assert "PredictRequest" in json.dumps(paths["/api/v1/jobs/{job_id}/predict"])


def test_dashboard_static_files(anon):
    """The dashboard page and its assets need no token; plotly.js comes from the plotly package."""
    import plotly

    page = anon.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/vendor/plotly.min.js">' in page.text
    js = anon.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert js.content == shipped.read_bytes()
    for name in ("app.js", "app.css"):
        assert anon.get(f"/static/dashboard/{name}").status_code == 200
    for bad in ("../routes.py", "..%2Froutes.py", "nope.js", "index.py"):
        assert anon.get(f"/static/dashboard/{bad}").status_code == 404, bad


def test_samples_of_a_job_over_the_limits_is_422_not_500(pclient, db, psettings, tmp_path):
    # A job stored before the resource limits existed: 100k test sequences of T=100k (40 GB).
    from celif_core.spec import NO_LIMITS, validate_spec
    from tests.service.predict_helpers import Trained

    params = {"seq_len": 100_000, "val_size": 10, "test_size": 100_000}
    spec = validate_spec(
        {"task": {"name": "adding", "params": params}, "model": {"hidden": [16]}},
        limits=NO_LIMITS,
    ).to_dict()
    job_id = make_job(
        db, psettings.storage_dir, Trained(spec, tmp_path / "none", 0), with_checkpoint=False
    )
    r = pclient.get(f"/api/v1/jobs/{job_id}/samples", params={"n": 1})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["spec", "task", "params", "test_size"]


def test_adding_accepts_a_shorter_T_but_not_beyond_the_te_table(pclient, db, psettings, trained):
    """Decided (docs/predict.md): the adding problem is defined for any length, so a T=24 job
    answers T=2 (its reading after 2 steps); a fixed-length task refuses any other T, and no T
    may exceed the TE table (one row per step)."""
    job_id = _job(db, psettings, trained, "adding")
    two_steps = [[[0.5, 1.0], [0.25, 1.0]]]
    r = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": two_steps})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1
    too_long = np.zeros((1, 25, 2)).tolist()  # te_length = T = 24
    r = pclient.post(f"/api/v1/jobs/{job_id}/predict", json={"inputs": too_long})
    assert r.status_code == 422
    assert "T=25" in r.json()["detail"][0]["msg"] and "24" in r.json()["detail"][0]["msg"]
    mnist = _job(db, psettings, trained, "seq_mnist")
    r = pclient.post(f"/api/v1/jobs/{mnist}/predict", json={"inputs": [[0.0, 0.0]]})
    assert r.status_code == 422 and "T=784" in r.json()["detail"][0]["msg"]
