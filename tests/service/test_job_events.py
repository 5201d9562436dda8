"""Metrics (`after=`), Server-Sent Events with Last-Event-ID resume, curves, checkpoints."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from jobstore.db.models import Checkpoint, Job
from jobstore.db.session import session_scope
from jobstore.events import append_event, append_metric_points
from jobstore.states import IllegalTransition, can_follow, transition

from .helpers import small_spec


def submit(client) -> str:
    r = client.post("/api/v1/jobs", json=small_spec())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def points(start: int, n: int, split: str = "train", name: str = "loss") -> list[dict]:
    return [
        {"step": s, "epoch": s / 100, "split": split, "name": name, "value": 1.0 / (s + 1)}
        for s in range(start, start + n)
    ]


def write_points(db: str, job_id: str, pts: list[dict]) -> None:
    with session_scope(db) as s:
        append_metric_points(s, job_id, pts)


def set_status(db: str, job_id: str, status: str, **data) -> None:
    """Move the job to `status` as a worker would (a queued job runs before it finishes)."""
    with session_scope(db) as s:
        if not can_follow(s.get(Job, job_id).status, status):
            assert transition(s, job_id, "running", worker_id="test-worker") is not None
        assert transition(s, job_id, status, event=data) is not None


# ----------------------------------------------------------------------------- metrics
def test_metrics_after_reads_incrementally(client, db):
    job_id = submit(client)
    write_points(db, job_id, points(0, 5))
    first = client.get(f"/api/v1/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in first["items"]] == [0, 1, 2, 3, 4]
    assert set(first["items"][0]) == {"seq", "step", "epoch", "split", "name", "value", "time"}
    seqs = [p["seq"] for p in first["items"]]
    assert seqs == sorted(seqs) and first["last_seq"] == seqs[-1]
    set_status(db, job_id, "running")  # status events are not metric points
    write_points(db, job_id, points(5, 3, split="val", name="mse"))
    write_points(db, job_id, [{"step": 8, "split": "train", "name": "loss", "value": float("nan")}])
    new = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"after": first["last_seq"]}).json()
    assert [(p["step"], p["name"]) for p in new["items"]] == [
        (5, "mse"),
        (6, "mse"),
        (7, "mse"),
        (8, "loss"),
    ]
    assert new["items"][-1]["value"] is None  # NaN is not JSON
    assert new["has_more"] is False
    empty = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"after": new["last_seq"]}).json()
    assert empty["items"] == [] and empty["last_seq"] == new["last_seq"]
    paged = client.get(f"/api/v1/jobs/{job_id}/metrics", params={"limit": 2}).json()
    assert len(paged["items"]) == 2 and paged["has_more"] is True


# ----------------------------------------------------------------------------- SSE
def parse_sse(lines):
    """Yield (id, event, data) per event; ('', 'comment', text) for comment lines."""
    ev: dict = {}
    for line in lines:
        if line == "":
            if "data" in ev or "event" in ev:
                yield ev.get("id", ""), ev.get("event", "message"), ev.get("data", "")
            ev = {}
        elif line.startswith(":"):
            yield "", "comment", line[1:].strip()
        else:
            field, _, value = line.partition(":")
            ev[field] = value[1:] if value.startswith(" ") else value


def read_events(client, job_id, *, n=None, headers=None, params=None, timeout=20):
    """Read the stream until `n` data events or its `end`; return the events."""
    got = []
    deadline = time.monotonic() + timeout
    with client.stream(
        "GET", f"/api/v1/jobs/{job_id}/events", headers=headers or {}, params=params
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for eid, event, data in parse_sse(r.iter_lines()):
            assert time.monotonic() < deadline, "stream too slow"
            if event == "comment":
                continue
            if event == "end":
                got.append((None, "end", json.loads(data)))
                break
            got.append((int(eid), event, json.loads(data)))
            if n is not None and len(got) >= n:
                break
    return got


def test_sse_delivers_live_events_and_resumes_without_gap_or_duplicate(client, db):
    job_id = submit(client)
    total = 40

    def writer():
        time.sleep(0.2)
        set_status(db, job_id, "running", attempt=1)
        for i in range(0, total, 4):
            write_points(db, job_id, points(i, 4))
            time.sleep(0.03)

    t = threading.Thread(target=writer)
    t.start()
    # queued + running + 20 metric points, written while we stream; then disconnect mid-way
    part1 = read_events(client, job_id, n=22)
    assert [e[1] for e in part1[:2]] == ["status", "status"]
    assert [e[2]["status"] for e in part1[:2]] == ["queued", "running"]
    last_id = part1[-1][0]
    t.join()
    with session_scope(db) as s:
        ckpt = Checkpoint(job_id=job_id, step=40, path="x", size=1, sha256="0" * 64)
        s.add(ckpt)
        s.flush()
        append_event(s, job_id, "checkpoint", {"id": ckpt.id, "step": 40})
    set_status(db, job_id, "succeeded")

    part2 = read_events(client, job_id, headers={"Last-Event-ID": str(last_id)})
    assert part2[-1] == (None, "end", {"status": "succeeded"})
    events = part1 + part2[:-1]
    ids = [e[0] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ordered, no duplicate
    metric_steps = [e[2]["step"] for e in events if e[1] == "metric"]
    assert metric_steps == list(range(total))  # no gap
    assert [e[1] for e in events[-2:]] == ["checkpoint", "status"]
    assert events[-1][2]["status"] == "succeeded"
    # a full replay from the start equals the two halves
    replay = read_events(client, job_id)
    assert [e[0] for e in replay[:-1]] == ids


def test_sse_sends_keepalive_comments_while_idle(client, db):
    job_id = submit(client)
    got = []

    def reader():
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as r:
            for line in r.iter_lines():
                got.append(line)
                if line.startswith(": keepalive"):
                    return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(5)
    assert any(line.startswith(": keepalive") for line in got), got


def test_sse_after_query_and_bad_last_event_id(client, db):
    job_id = submit(client)
    write_points(db, job_id, points(0, 3))
    set_status(db, job_id, "failed", error="boom")
    everything = read_events(client, job_id)
    after = everything[1][0]  # skip queued + the first point
    tail = read_events(client, job_id, params={"after": after})
    assert [e[0] for e in tail[:-1]] == [e[0] for e in everything[2:-1]]
    assert tail[-2][2]["error"] == "boom"
    bad = client.get(f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


def test_events_stream_ends_for_finished_job(client, db):
    job_id = submit(client)
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    r = httpx.get(f"{client.base_url}/api/v1/jobs/{job_id}/events", headers=client.headers)
    assert r.status_code == 200
    assert "event: end" in r.text and '"cancelled"' in r.text


# ----------------------------------------------------------------------------- curves
def test_curves_png_and_svg(client, db):
    job_id = submit(client)
    empty = client.get(f"/api/v1/jobs/{job_id}/curves.png")
    assert empty.status_code == 200 and empty.content.startswith(b"\x89PNG\r\n\x1a\n")
    write_points(db, job_id, points(0, 50))
    write_points(db, job_id, points(0, 50, split="val"))
    write_points(db, job_id, points(0, 5, split="val", name="accuracy"))
    png = client.get(f"/api/v1/jobs/{job_id}/curves.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and len(png.content) > 5000
    svg = client.get(f"/api/v1/jobs/{job_id}/curves.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content
    assert client.get(f"/api/v1/jobs/{job_id}/curves.gif").status_code in (404, 422)


# ----------------------------------------------------------------------------- checkpoints
def make_checkpoint(db, settings, job_id, step, *, best=False, payload=None) -> tuple[str, bytes]:
    data = payload or f"fake safetensors of step {step}".encode()
    rel = f"jobs/{job_id}/step-{step}.safetensors"
    path = settings.storage_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with session_scope(db) as s:
        ckpt = Checkpoint(
            job_id=job_id,
            step=step,
            path=rel,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            metrics={"val_mse": 0.1 / step},
            is_best=best,
        )
        s.add(ckpt)
        s.flush()
        return ckpt.id, data


def test_checkpoints_list_and_download(client, bob, db, settings):
    job_id = submit(client)
    assert client.get(f"/api/v1/jobs/{job_id}/checkpoints").json() == []
    assert client.get(f"/api/v1/jobs/{job_id}/checkpoints/latest").status_code == 404
    c50, d50 = make_checkpoint(db, settings, job_id, 50)
    c100, d100 = make_checkpoint(db, settings, job_id, 100, best=True)
    c150, d150 = make_checkpoint(db, settings, job_id, 150)

    listed = client.get(f"/api/v1/jobs/{job_id}/checkpoints").json()
    assert [c["id"] for c in listed] == [c50, c100, c150]
    assert listed[1]["is_best"] is True
    assert listed[0]["sha256"] == hashlib.sha256(d50).hexdigest()
    assert listed[0]["size"] == len(d50)
    assert listed[0]["download"] == f"/api/v1/jobs/{job_id}/checkpoints/{c50}"

    for ref, cid, data, step in (
        ("latest", c150, d150, 150),
        ("best", c100, d100, 100),
        (c50, c50, d50, 50),
    ):
        r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/{ref}")
        assert r.status_code == 200, r.text
        assert r.content == data
        assert r.headers["x-checkpoint-id"] == cid
        assert r.headers["x-checkpoint-sha256"] == hashlib.sha256(data).hexdigest()
        assert r.headers["content-type"] == "application/octet-stream"
        assert f'filename="{job_id}-step{step}.safetensors"' in r.headers["content-disposition"]
    assert client.get(f"/api/v1/jobs/{job_id}/checkpoints/nope").status_code == 404
    assert bob.get(f"/api/v1/jobs/{job_id}/checkpoints/{c50}").status_code == 404
    # registered but its file is gone: 404, not a 500
    (settings.storage_dir / f"jobs/{job_id}/step-50.safetensors").unlink()
    assert client.get(f"/api/v1/jobs/{job_id}/checkpoints/{c50}").status_code == 404


def test_best_falls_back_to_latest_and_paths_stay_in_storage(client, db, settings):
    job_id = submit(client)
    _, data = make_checkpoint(db, settings, job_id, 10)
    r = client.get(f"/api/v1/jobs/{job_id}/checkpoints/best")
    assert r.status_code == 200 and r.content == data
    with session_scope(db) as s:
        s.add(Checkpoint(job_id=job_id, step=20, path="../../etc/passwd", size=1, sha256="0"))
    assert client.get(f"/api/v1/jobs/{job_id}/checkpoints/latest").status_code == 404
    with session_scope(db) as s:
        assert len(s.scalars(select(Checkpoint)).all()) == 2


def test_large_download_streams(client, db, settings):
    job_id = submit(client)
    blob = bytes(range(256)) * 8192  # 2 MiB
    cid, _ = make_checkpoint(db, settings, job_id, 1, payload=blob)
    h = hashlib.sha256()
    with client.stream("GET", f"/api/v1/jobs/{job_id}/checkpoints/{cid}") as r:
        for chunk in r.iter_bytes():
            h.update(chunk)
        assert r.headers["x-checkpoint-sha256"] == h.hexdigest()


def test_transition_sets_status_and_timestamps(client, db):
    job_id = submit(client)
    set_status(db, job_id, "running", attempt=1)
    with session_scope(db) as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.started_at is not None and job.finished_at is None
        started = job.started_at
        with pytest.raises(IllegalTransition, match="unknown job status"):
            transition(s, job_id, "exploded")
    set_status(db, job_id, "running", attempt=2)  # a resumed job keeps its first start time
    set_status(db, job_id, "failed", error="NaN loss")
    body = client.get(f"/api/v1/jobs/{job_id}").json()
    assert body["status"] == "failed" and body["finished_at"] is not None
    with session_scope(db) as s:
        assert s.get(Job, job_id).started_at == started
    statuses = [e[2] for e in read_events(client, job_id)[:-1]]
    assert [(e["status"], e.get("attempt"), e.get("error")) for e in statuses] == [
        ("queued", None, None),
        ("running", 1, None),
        ("running", 2, None),
        ("failed", None, "NaN loss"),
    ]
