"""`celif study submit | status | table` as a subprocess against the running service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .helpers import small_spec
from .test_studies import grid_study, mse_points, run_trial

REPO = Path(__file__).resolve().parents[2]


def celif(server, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CELIF_TOKEN": token}
    cmd = [sys.executable, "-m", "celif_cli.main", "study", *args, "--url", server.url]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_submit_status_table(server, tokens, db, tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(grid_study()))
    r = celif(server, tokens.alice, "submit", str(path))
    assert r.returncode == 0, r.stderr
    study_id = r.stdout.strip()
    run_trial(db, _trial(server, tokens.alice, study_id), points=mse_points({10: 0.25}))

    r = celif(server, tokens.alice, "status", study_id)
    assert r.returncode == 0, r.stderr
    assert "status: running  trials: 1/4 finished" in r.stdout
    assert "best: trial 0 val_mse=0.25" in r.stdout

    r = celif(server, tokens.alice, "table", study_id)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "training.lr", "model.neuron_params.ce_mode"]
    assert len(lines) == 5 and "succeeded" in lines[1] and "0.25" in lines[1]
    r = celif(server, tokens.alice, "table", study_id, "--csv")
    assert r.stdout.startswith("trial,job_id,status,training.lr")

    r = celif(server, tokens.bob, "status", study_id)  # another user's: not found
    assert r.returncode == 1 and "404" in r.stderr


def test_a_bad_study_names_the_trial_and_field(server, tokens, db, tmp_path):
    path = tmp_path / "bad.json"
    body = {"base": small_spec(), "search": {"type": "list", "trials": [{"training.lr": -1}]}}
    path.write_text(json.dumps(body))
    r = celif(server, tokens.alice, "submit", str(path))
    assert r.returncode == 1
    assert "422" in r.stderr and "trials.0.training.lr" in r.stderr


def _trial(server, token: str, study_id: str) -> str:
    import httpx

    r = httpx.get(
        f"{server.url}/api/v1/studies/{study_id}", headers={"Authorization": f"Bearer {token}"}
    )
    return r.json()["trials"][0]["job_id"]


def test_follow_ends_with_the_study(server, tokens, db, tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(grid_study()))
    study_id = celif(server, tokens.alice, "submit", str(path)).stdout.strip()
    import httpx

    auth = {"Authorization": f"Bearer {tokens.alice}"}
    r = httpx.post(f"{server.url}/api/v1/studies/{study_id}/cancel", headers=auth)
    assert r.status_code == 200, r.text
    r = celif(server, tokens.alice, "status", study_id, "--follow", "--poll", "0.1")
    assert r.returncode == 1  # it ended, but not as completed
    assert "status: cancelled  trials: 4/4 finished (4 cancelled)" in r.stdout
    assert f"{study_id}: cancelled 4/4" in r.stderr  # plain progress lines off a terminal
