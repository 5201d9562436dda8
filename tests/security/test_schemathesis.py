"""Schemathesis over the app's own OpenAPI document, against the real app (uvicorn) on
PostgreSQL: generated valid (positive) and invalid (negative) requests to every operation, as
alice, half of them with alice's real job, dataset and stream ids (so requests reach past the
ownership 404). No 5xx allowed. The example count is modest (SCHEMATHESIS_EXAMPLES, default 12
per operation and mode) so the run takes a few minutes on a small busy machine."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.security.test_probes import world  # noqa: F401  (the fixture)

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))
IDS = ("job_id", "dataset_id", "stream_id")


def test_no_server_errors(backend, pserver, tokens, world):  # noqa: F811
    if backend.name != "postgresql":
        pytest.skip("schemathesis runs against PostgreSQL (the probes cover SQLite too)")
    schema = schemathesis.openapi.from_url(f"{pserver.url}/openapi.json")
    headers = {"Authorization": f"Bearer {tokens.alice}"}
    failures: list[str] = []
    operations = calls = 0
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for real_ids in (False, True):
                fixed = {n: world[n] for n in IDS if real_ids and f"{{{n}}}" in op.path}
                if real_ids and not fixed:
                    continue
                strategy = op.as_strategy(generation_mode=mode, path_parameters=fixed or None)

                run = _runner(strategy, headers, mode.name.lower())
                try:
                    run()
                    calls += 1
                except Unsatisfiable:
                    continue  # e.g. no invalid request exists for an operation without inputs
                except AssertionError as exc:
                    failures.append(str(exc).splitlines()[0][:400])
    assert operations >= 20 and calls >= operations
    assert failures == []


def _runner(strategy, headers: dict[str, str], label: str):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=strategy)
    def run(case) -> None:
        response = case.call(headers=headers, timeout=60)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} ({label}): "
            f"{response.status_code} {response.text[:300]}"
        )

    return run
