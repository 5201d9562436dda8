"""Dynamic batching: the work-conserving batcher (a lone request goes at once; requests that
arrive while the workers are busy go in the next forward, bounded by the queue size) on a real
predict pool, and predict_batching="auto" (measured per model when it is loaded)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from service import inference
from service.app import create_app
from service.predict import service as predict_service
from tests.service.conftest import ServerThread
from tests.service.predict_helpers import make_job

pytest_plugins = ["tests.service.fixtures_predict"]


def _pool(queue_size: int = 8) -> inference.InferencePool:
    # The pool sets torch's threads process wide: keep this process's.
    return inference.InferencePool(
        workers=1, torch_threads=torch.get_num_threads(), queue_size=queue_size
    )


def _blocking_runner(release: threading.Event, seen: list):
    def runner(items: list) -> list:
        seen.append(list(items))
        if "block" in items:
            assert release.wait(30)
        return [f"done {i}" for i in items]

    return runner


def test_a_lone_request_goes_at_once_and_waiting_ones_share_the_next_forward():
    pool = _pool()
    release, seen = threading.Event(), []
    runner = _blocking_runner(release, seen)

    async def scenario() -> list:
        batcher = inference.Batcher(pool, wait_s=0, max_steps=100)
        first = asyncio.create_task(batcher.run("k", 1, "block", runner))
        await asyncio.sleep(0)  # the request reached its await: handed to the pool already
        assert batcher.batches == 1
        same = [asyncio.create_task(batcher.run("k", 1, i, runner)) for i in range(3)]
        other = asyncio.create_task(batcher.run("j", 1, "x", runner))
        await asyncio.sleep(0)
        assert batcher.batches == 1  # the only worker is busy: they wait, gathered by key
        release.set()
        return await asyncio.wait_for(asyncio.gather(first, *same, other), 30)

    try:
        results = asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert results == ["done block", "done 0", "done 1", "done 2", "done x"]
    assert seen == [["block"], [0, 1, 2], ["x"]]  # one forward for the three, oldest first


@pytest.mark.parametrize("per_call", [False, True])
def test_a_batch_holds_at_most_max_steps(per_call):
    pool = _pool()
    release, seen = threading.Event(), []
    runner = _blocking_runner(release, seen)

    async def scenario() -> None:
        # The batcher's limit, or a smaller one given with the request (auto: per model).
        batcher = inference.Batcher(pool, wait_s=0, max_steps=100 if per_call else 2)
        most = 2 if per_call else None
        first = asyncio.create_task(batcher.run("k", 1, "block", runner, most))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.run("k", 1, i, runner, most)) for i in range(3)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), 30)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert seen == [["block"], [0, 1], [2]]


def test_requests_waiting_beyond_the_queue_size_are_refused_at_once():
    pool = _pool(queue_size=2)
    release, seen = threading.Event(), []
    runner = _blocking_runner(release, seen)

    async def scenario() -> None:
        batcher = inference.Batcher(pool, wait_s=0, max_steps=100)
        first = asyncio.create_task(batcher.run("k", 1, "block", runner))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(batcher.run("k", 1, i, runner)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(inference.QueueFull, match="settings.predict_queue_size"):
            await batcher.run("k", 1, "one too many", runner)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *waiting), 30)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert seen == [["block"], [0, 1]]


def test_batching_gains_rule():
    assert inference.batching_gains(1.0, 0.5)
    assert inference.batching_gains(1.0, inference.BATCHING_GAIN)
    assert not inference.batching_gains(1.0, 0.9)
    assert not inference.batching_gains(2.0, 2.4)  # the paper-size model on the CPU


def test_auto_batches_a_model_as_its_load_measured(db, psettings, trained, tokens):
    import httpx

    settings = psettings.model_copy(update={"predict_batching": "auto", "predict_workers": 1})
    app = create_app(settings)
    runtime = predict_service.get_runtime(app.state, settings)
    job = make_job(db, settings.storage_dir, trained["adding"])
    x = {"inputs": np.random.default_rng(0).random((2, 24, 2)).tolist()}
    with (
        ServerThread(app) as srv,
        httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {tokens.alice}"}, timeout=60
        ) as c,
    ):
        first = c.post(f"/api/v1/jobs/{job}/predict", json=x)
        assert first.status_code == 200, first.text
        sha = first.json()["checkpoint"]["sha256"]
        loaded = runtime.cache.peek(sha)
        # Measured once, at the load, on the model's own T and F.
        assert loaded.batching in (True, False)
        assert loaded.calibration["alone_s"] > 0
        assert loaded.batching == inference.batching_gains(
            loaded.calibration["alone_s"], loaded.calibration["batched_per_sequence_s"]
        )
        assert loaded.max_batch in inference.CALIBRATION_SIZES
        assert (loaded.max_batch > 1) == loaded.batching
        # predict_synapses="auto": layer 1 (fed by spikes) timed both ways, chosen by the rule
        times = loaded.synapse_calibration[1]
        assert set(loaded.synapse_calibration) == {1}
        faster = times["event_s"] <= inference.EVENT_SYNAPSE_GAIN * times["dense_s"]
        assert loaded.model.event_synapses == ({1} if faster else set())
        answers = []
        for gains in (True, False):
            loaded.batching, loaded.max_batch = gains, 4
            before = runtime.batcher.batches
            r = c.post(f"/api/v1/jobs/{job}/predict", json=x)
            assert r.status_code == 200, r.text
            assert runtime.batcher.batches - before == (1 if gains else 0)
            answers.append({k: v for k, v in r.json().items() if k != "elapsed_ms"})
        assert answers[0] == answers[1]  # batched or not, the same answer
    runtime.pool.shutdown()
