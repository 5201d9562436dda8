"""Streaming predict caps: per user and global. User A at its cap does not block user B."""

from __future__ import annotations

import httpx
import pytest

from service.app import create_app
from tests.service.conftest import ServerThread
from tests.service.predict_helpers import make_job


@pytest.fixture(scope="module")
def capped_server(psettings):
    settings = psettings.model_copy(update={"max_streams_per_user": 3, "max_streams": 5})
    with ServerThread(create_app(settings)) as srv:
        yield srv


def test_one_user_at_the_cap_blocks_no_one_else(capped_server, db, psettings, trained, tokens):
    a_job = make_job(db, psettings.storage_dir, trained["adding"], owner="alice")
    b_job = make_job(db, psettings.storage_dir, trained["adding"], owner="bob")
    with (
        httpx.Client(
            base_url=capped_server.url, headers={"Authorization": f"Bearer {tokens.alice}"}
        ) as alice,
        httpx.Client(
            base_url=capped_server.url, headers={"Authorization": f"Bearer {tokens.bob}"}
        ) as bob,
    ):
        opened = [alice.post(f"/api/v1/jobs/{a_job}/streams", json={}) for _ in range(3)]
        assert [r.status_code for r in opened] == [201, 201, 201]
        over = alice.post(f"/api/v1/jobs/{a_job}/streams", json={})
        assert over.status_code == 429
        assert "limit per user is 3" in over.json()["detail"]
        assert "max_streams_per_user" in over.json()["detail"]
        # Bob is not blocked by alice: his own streams open and answer.
        mine = [bob.post(f"/api/v1/jobs/{b_job}/streams", json={}) for _ in range(2)]
        assert [r.status_code for r in mine] == [201, 201]
        sid = mine[0].json()["stream_id"]
        chunk = bob.post(
            f"/api/v1/jobs/{b_job}/streams/{sid}/chunks", json={"inputs": [[[0.1, 1.0]] * 4]}
        )
        assert chunk.status_code == 200, chunk.text
        # The server-wide cap (5) still holds.
        full = bob.post(f"/api/v1/jobs/{b_job}/streams", json={})
        assert full.status_code == 429 and "settings.max_streams" in full.json()["detail"]
        # Alice closing one frees a slot (for anyone).
        first = opened[0].json()["stream_id"]
        assert alice.delete(f"/api/v1/jobs/{a_job}/streams/{first}").status_code == 204
        assert bob.post(f"/api/v1/jobs/{b_job}/streams", json={}).status_code == 201
