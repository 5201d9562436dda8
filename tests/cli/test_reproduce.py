"""`celif reproduce` end to end: a real embedded `celif serve` (API + supervised worker), the
command run as a subprocess against it over HTTP, on the tiny recipe, a few steps.

Submits, follows to the end, writes the report; a second call submits nothing new; more
budget with --continue starts from the job's checkpoint; a cancelled job is reported, not
resubmitted; after the service is replaced by a fresh one, --continue uploads the checkpoint
saved in the output folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image

from celif_cli.reproduce.api import file_sha256
from tests.cli.test_serve import embedded_serve
from tests.worker.conftest import REPO

RECIPE = "demo/adding-tiny"
SLUG = "demo_adding-tiny"
STEPS = 12
PAPER = "paper/seq_mnist-83k"


def reproduce(base: str, token: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELIF_")}
    env.update(PYTHONPATH=str(REPO), CELIF_TOKEN=token)
    cmd = [sys.executable, "-m", "celif_cli.main", "reproduce", "--url", base, "--out", str(out), *args]  # fmt: skip
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def all_jobs(base: str, headers: dict[str, str]) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base}/api/v1/jobs", params=params, headers=headers, timeout=30).json()
        jobs += page["items"]
        if not (cursor := page["next_cursor"]):
            return jobs


def report_row(md: str, recipe: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| `{recipe}`"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_reproduce_end_to_end(tmp_path: Path):
    out = tmp_path / "results"
    follow = ["--wait", "--poll", "0.5", "--timeout", "300"]
    run_args = ["--recipes", RECIPE, "--override", f"training.max_steps={STEPS}", *follow]
    with embedded_serve(tmp_path / "data") as served:
        base, token = served.base, served.token
        h = {"Authorization": f"Bearer {token}"}
        recipe = httpx.get(f"{base}/api/v1/recipes/{RECIPE}", headers=h, timeout=30).json()

        # A wrong token and an unknown recipe are clear errors, and submit nothing.
        r = reproduce(base, "not-a-token", out, *run_args)
        assert r.returncode == 1 and "401" in r.stderr and "--token" in r.stderr, r.stderr
        r = reproduce(base, token, out, "--recipes", "demo/no-such-recipe")
        assert r.returncode == 2 and "--recipes" in r.stderr and RECIPE in r.stderr, r.stderr
        assert all_jobs(base, h) == []

        # 1. Submits, follows to the end, writes the report.
        r = reproduce(base, token, out, *run_args)
        assert r.returncode == 0, (r.stderr, served.out.text[-3000:])
        state = json.loads((out / "reproduce-state.json").read_text())
        [entry] = state["recipes"][RECIPE]["jobs"]
        jid = entry["id"]
        assert entry["url"] == base
        jobs = all_jobs(base, h)
        assert [j["id"] for j in jobs] == [jid]
        job = jobs[0]
        assert job["name"] == f"reproduce:{RECIPE}" and job["status"] == "succeeded", job
        assert job["spec"]["recipe"] == RECIPE
        assert job["progress"]["step"] == STEPS

        md = (out / "reproduce.md").read_text()
        assert f"## {recipe['table']}" in md
        row = report_row(md, RECIPE)
        metric = recipe["reference"]["paper"]["metric"] if recipe["reference"]["paper"] else "test_mse"  # fmt: skip
        assert row[1] == metric and metric.startswith("test_")
        ours = job["latest_metrics"][metric]
        assert row[2] == f"{ours:.4g} (final model, test set)", row
        for col, source in ((3, "paper"), (4, "neuroseqbench")):
            ref = recipe["reference"][source]
            assert row[col] == (f"{ref['value']:.4g}" if ref else "-"), (row, ref)
            if ref:
                assert row[col + 2] == f"{ours - ref['value']:+.4g}"
        assert row[7] == "succeeded" and row[8].startswith(f"{STEPS}/{STEPS} steps")
        assert f"--recipes {RECIPE}" in row[10] and f"training.max_steps={STEPS}" in row[10]
        assert f"job `{jid}`" in md
        assert_png(out / "curves" / f"{SLUG}.png")
        tables = list((out / "curves").glob("table-*.png"))
        assert len(tables) == 1
        assert_png(tables[0])

        # 2. A second call submits nothing new: same job, reported again; checkpoints saved.
        r = reproduce(base, token, out, *run_args, "--save-checkpoints")
        assert r.returncode == 0, r.stderr
        assert "submitting" not in r.stderr and f"job {jid} succeeded" in r.stderr, r.stderr
        assert [j["id"] for j in all_jobs(base, h)] == [jid]
        state = json.loads((out / "reproduce-state.json").read_text())
        assert [j["id"] for j in state["recipes"][RECIPE]["jobs"]] == [jid]
        assert f"job `{jid}`" in (out / "reproduce.md").read_text()
        ckpts = httpx.get(f"{base}/api/v1/jobs/{jid}/checkpoints", headers=h, timeout=30).json()
        latest = max(ckpts, key=lambda c: c["step"])
        saved = state["recipes"][RECIPE]["checkpoints"]
        assert saved["latest"]["sha256"] == latest["sha256"] and saved["latest"]["step"] == STEPS
        for which in ("latest", "best"):
            path = out / "checkpoints" / SLUG / f"{which}.safetensors"
            assert path.stat().st_size == saved[which]["size_bytes"] > 0

        # 3. More budget with --continue: one new job from the first one's latest checkpoint.
        more = ["--recipes", RECIPE, "--override", f"training.max_steps={2 * STEPS}", *follow]
        r = reproduce(base, token, out, *more, "--continue", "--save-checkpoints")
        assert r.returncode == 0, (r.stderr, served.out.text[-3000:])
        jobs = all_jobs(base, h)
        assert len(jobs) == 2 and jobs[1]["id"] == jid
        second = jobs[0]
        assert second["status"] == "succeeded", second
        assert second["spec"]["init_from"]["job"] == jid
        assert f"job `{second['id']}`" in (out / "reproduce.md").read_text()
        row = report_row((out / "reproduce.md").read_text(), RECIPE)
        assert "continued from" in row[7] and "--continue" in row[10]
        # The saved best is the continued job's own best, or (when it has not beaten the run it
        # continues, so the service's "best" would be its latest) still the first job's.
        second_ckpts = httpx.get(
            f"{base}/api/v1/jobs/{second['id']}/checkpoints", headers=h, timeout=30
        ).json()
        own_best = [c for c in second_ckpts if c["is_best"]]
        expected_best = own_best[0] if own_best else next(c for c in ckpts if c["is_best"])
        best_file = out / "checkpoints" / SLUG / "best.safetensors"
        assert file_sha256(best_file) == expected_best["sha256"]
        # ... and asked again, nothing more
        r = reproduce(base, token, out, *more, "--continue")
        assert r.returncode == 0 and "submitting" not in r.stderr, r.stderr
        assert len(all_jobs(base, h)) == 2

        # 4. A job that ended cancelled is reported as such, beside the paper's figure, and
        # not resubmitted. (Cancelled at once: the recipe's full budget never runs.)
        # (train_subset: the job must be runnable on the tests' small MNIST-format set too,
        # so that it ends by the cancel and not by a data error first.)
        r = reproduce(
            base, token, out, "--recipes", PAPER, "--override", "task.params.train_subset=256",
            "--no-follow",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        state = json.loads((out / "reproduce-state.json").read_text())
        [pid] = [j["id"] for j in state["recipes"][PAPER]["jobs"]]
        c = httpx.post(f"{base}/api/v1/jobs/{pid}/cancel", headers=h, timeout=30)
        assert c.status_code == 200, c.text
        r = reproduce(base, token, out, *follow)  # no --recipes: all the folder holds
        assert r.returncode == 1, r.stderr  # a cancelled job
        assert "submitting" not in r.stderr and "not resubmitted" in r.stderr, r.stderr
        assert len(all_jobs(base, h)) == 3
        md = (out / "reproduce.md").read_text()
        paper = httpx.get(f"{base}/api/v1/recipes/{PAPER}", headers=h, timeout=30).json()
        row = report_row(md, PAPER)
        assert row[1] == "test_accuracy" and row[7].startswith("cancelled"), row
        assert row[3] == f"{100 * paper['reference']['paper']['value']:.2f} %" and row[4] == "-"
        assert f"## {paper['table']}" in md and report_row(md, RECIPE)[0] == f"`{RECIPE}`"

    # 5. The service is gone; a fresh one (empty database) does not know the state's jobs.
    with embedded_serve(tmp_path / "data2") as served2:
        base2, token2 = served2.base, served2.token
        h2 = {"Authorization": f"Bearer {token2}"}
        # A plain rerun submits nothing: what finished there is reported from the state file,
        # with the overrides it ran with (the recipes' budgets are not trained again).
        r = reproduce(base2, token2, out, "--no-follow")
        assert r.returncode == 0 and "submitting" not in r.stderr, r.stderr
        assert all_jobs(base2, h2) == []
        md = (out / "reproduce.md").read_text()
        row = report_row(md, RECIPE)
        assert row[7].startswith("succeeded") and f"last seen on {base}" in row[7], row
        assert f"training.max_steps={2 * STEPS}" in row[10], row
        # the first service's cancelled job is still in the report, as last seen there
        row = report_row(md, PAPER)
        assert row[7].startswith("cancelled") and f"last seen on {base}" in row[7], row
        # More budget with --continue: the saved checkpoint is uploaded and the run goes on
        # from its step.
        most = ["--recipes", RECIPE, "--override", f"training.max_steps={3 * STEPS}", *follow]
        r = reproduce(base2, token2, out, *most, "--continue")
        assert r.returncode == 0, (r.stderr, served2.out.text[-3000:])
        [job] = all_jobs(base2, h2)
        assert job["status"] == "succeeded" and job["spec"]["init_from"]["upload"], job
        assert job["progress"]["step"] == 3 * STEPS
        points = httpx.get(f"{base2}/api/v1/jobs/{job['id']}/metrics", headers=h2, timeout=30)
        train_steps = [p["step"] for p in points.json()["items"] if p.get("split") == "train"]
        assert train_steps and min(train_steps) > 2 * STEPS, train_steps  # continued, not anew
        state = json.loads((out / "reproduce-state.json").read_text())
        assert [j["id"] for j in state["recipes"][RECIPE]["jobs"]][-1] == job["id"]
        assert len(state["recipes"][RECIPE]["jobs"]) == 3
        assert "(continued from uploaded checkpoint" in report_row((out / "reproduce.md").read_text(), RECIPE)[7]  # fmt: skip
