"""The app shell: health, readiness, Prometheus metrics, body limit, CORS, catalogs, imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from jobstore.settings import Settings
from service.app import create_app

from .conftest import ServerThread
from .helpers import small_spec

REPO = Path(__file__).resolve().parents[2]


def test_healthz_and_readyz(anon):
    assert anon.get("/healthz").json() == {"status": "ok"}
    r = anon.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_when_the_broker_is_unreachable(settings, tmp_path):
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with ServerThread(create_app(broken)) as srv:
        r = httpx.get(f"{srv.url}/readyz", timeout=30)
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error")


def test_metrics_exposition(client, anon):
    client.post("/api/v1/jobs", json=small_spec())
    job = client.post("/api/v1/jobs", json=small_spec()).json()
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    r = anon.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'celif_jobs{state="queued"} 1.0' in text
    assert 'celif_jobs{state="cancelled"} 1.0' in text
    assert 'celif_jobs{state="running"} 0.0' in text
    assert "celif_queue_depth " in text and "celif_queue_depth -1" not in text
    assert (
        'celif_http_request_duration_seconds_count{method="POST",route="/api/v1/jobs",'
        'status="201"}' in text
    )
    assert 'route="/api/v1/jobs/{job_id}/cancel"' in text  # templates, not raw ids
    assert job["id"] not in text


def test_catalogs(client):
    tasks = client.get("/api/v1/tasks").json()["items"]
    assert {t["name"] for t in tasks} == {
        "seq_mnist",
        "ps_mnist",
        "adding",
        "copy_memory",
        "dataset",
    }
    adding = next(t for t in tasks if t["name"] == "adding")
    assert adding["defaults"]["seq_len"] == 100 and "properties" in adding["params_schema"]
    neurons = client.get("/api/v1/neurons").json()
    assert {n["name"] for n in neurons["items"]} == {"lif", "alif", "plif", "celif", "lstm"}
    celif = next(n for n in neurons["items"] if n["name"] == "celif")
    assert celif["defaults"]["alpha"] == 0.5 and celif["defaults"]["ce_mode"] == "membrane_te"
    assert neurons["training_defaults"]["batch_size"] == 256


def test_catalogs_serve_the_names_and_facts_the_dashboard_uses(client):
    # The dashboard hard-codes no task, neuron or mode name: these fields are what it reads.
    from celif_core.spec import CE_MODES, TASKS, TrainingSpec

    tasks = client.get("/api/v1/tasks").json()
    by_name = {t["name"]: t for t in tasks["items"]}
    assert tasks["default"] in TASKS and by_name[tasks["default"]]["image"] is None  # no download
    assert {n: t["input_size"] for n, t in by_name.items()} == {
        "seq_mnist": 1, "ps_mnist": 1, "adding": 2, "copy_memory": 10, "dataset": None,
    }  # fmt: skip
    assert by_name["seq_mnist"]["image"] == {"height": 28, "width": 28, "pixel_order": "raster"}
    assert by_name["ps_mnist"]["image"]["pixel_order"] == "permuted"
    neurons = client.get("/api/v1/neurons").json()
    assert neurons["default"] == "celif"
    facts = {n["name"]: (n["spiking"], n["te_modes"]) for n in neurons["items"]}
    assert facts["lstm"] == (False, []) and facts["lif"] == (True, [])
    assert facts["celif"] == (True, ["te", "spike_te", "membrane_te"])
    assert set(facts["celif"][1]) < set(CE_MODES)
    schema = neurons["training_schema"]["properties"]
    for name in ("optimizer", "lr_schedule", "device", "backend", "memory"):
        assert schema[name]["enum"] == list(TrainingSpec.model_fields[name].annotation.__args__)


def test_body_size_limit(client, db):
    # settings.max_body_bytes is 64 KiB in these tests
    big = small_spec(name="x" * 100) | {"padding": "y" * 70_000}
    r = client.post("/api/v1/jobs", json=big)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"name": "'
        for _ in range(20):
            yield b"z" * 8192
        yield b'"}'

    r = client.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert client.get("/api/v1/jobs").json()["items"] == []


def test_cors_off_by_default_and_on_when_configured(settings, tokens):
    with ServerThread(create_app(settings)) as srv:
        r = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://example.org"})
        assert "access-control-allow-origin" not in r.headers
    on = settings.model_copy(update={"cors_origins": ["https://example.org"]})
    with ServerThread(create_app(on)) as srv:
        r = httpx.options(
            f"{srv.url}/api/v1/jobs",
            headers={
                "Origin": "https://example.org",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,idempotency-key",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://example.org"
        other = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_openapi_lists_the_routes(anon):
    paths = anon.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/jobs",
        "/api/v1/jobs:validate",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/{job_id}/metrics",
        "/api/v1/jobs/{job_id}/events",
        "/api/v1/jobs/{job_id}/curves.{fmt}",
        "/api/v1/jobs/{job_id}/checkpoints",
        "/api/v1/jobs/{job_id}/checkpoints/{ref}",
        "/api/v1/tasks",
        "/api/v1/neurons",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path


def test_importing_the_app_does_not_import_torch():
    code = (
        "import sys; import service.app, service.jobs.routes, service.health, jobstore.events; "
        "service.app.create_app(); "
        "bad = sorted(m for m in ('torch', 'celif_core.models', 'celery') if m in sys.modules); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_settings_object_is_the_apps(settings):
    app = create_app(settings)
    assert app.state.settings is settings
    assert isinstance(app.state.settings, Settings)
