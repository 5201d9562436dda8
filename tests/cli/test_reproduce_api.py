"""`celif reproduce`, the pure parts: selection, overrides, state file, decisions, report.

The end-to-end run against a real `celif serve` is tests/worker/test_reproduce.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from celif_cli.reproduce import plan, report
from celif_cli.reproduce.api import ApiError, Client, format_detail
from tests.helpers import free_port

CATALOG = [
    {"name": "demo/adding-tiny", "table": "Demo"},
    {"name": "paper/seq_mnist-83k", "table": "Seq-MNIST / PS-MNIST (paper Table 2)"},
    {"name": "paper/ps_mnist-83k", "table": "Seq-MNIST / PS-MNIST (paper Table 2)"},
    {"name": "paper/seq_mnist-154k", "table": "Seq-MNIST / PS-MNIST (paper Table 2)"},
    {"name": "paper/ablation-spike", "table": "Ablation (paper Table 4)"},
    {"name": "neuroseqbench/ps_mnist-ff", "table": "Seq-MNIST / PS-MNIST (paper Table 2)"},
]


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (["demo/adding-tiny"], ["demo/adding-tiny"]),
        (["paper/seq_mnist-*"], ["paper/seq_mnist-83k", "paper/seq_mnist-154k"]),
        (
            ["paper"],
            [
                "paper/seq_mnist-83k",
                "paper/ps_mnist-83k",
                "paper/seq_mnist-154k",
                "paper/ablation-spike",
            ],
        ),  # fmt: skip
        (
            ["table:seq-mnist*"],
            [
                "paper/seq_mnist-83k",
                "paper/ps_mnist-83k",
                "paper/seq_mnist-154k",
                "neuroseqbench/ps_mnist-ff",
            ],
        ),  # fmt: skip
        # catalog order, each once, whatever the order and overlap of the selectors
        (
            ["*/ps_mnist-*", "paper/ps_mnist-83k", "demo/adding-tiny"],
            ["demo/adding-tiny", "paper/ps_mnist-83k", "neuroseqbench/ps_mnist-ff"],
        ),  # fmt: skip
        (["all"], [r["name"] for r in CATALOG]),
    ],
)
def test_select_recipes(selectors, expected):
    assert plan.select_recipes(selectors, CATALOG) == expected


@pytest.mark.parametrize("selector", ["paper/seq_mnist-999k", "nope", "table:Nothing*", "x*"])
def test_select_unknown_names_the_flag_and_lists_recipes(selector):
    with pytest.raises(plan.UsageError) as err:
        plan.select_recipes([selector], CATALOG)
    assert err.value.flag == "--recipes"
    assert repr(selector) in str(err.value) and "demo/adding-tiny" in str(err.value)


# ----------------------------------------------------------------------------- overrides
def test_override_values_are_json_or_strings():
    assert plan.parse_override("training.max_epochs=3") == (["training", "max_epochs"], 3)
    assert plan.parse_override("model.hidden=[64, 88, 88]") == (["model", "hidden"], [64, 88, 88])
    assert plan.parse_override("model.neuron_params.ce_timing=previous") == (
        ["model", "neuron_params", "ce_timing"],
        "previous",
    )
    assert plan.parse_override("training.bptt_chunk=null") == (["training", "bptt_chunk"], None)
    assert plan.parse_override("training.lr=3e-3") == (["training", "lr"], 0.003)


@pytest.mark.parametrize(
    "text", ["training.max_epochs", "=3", "training..lr=1", "recipe=x", "name=y", "training=1"]
)
def test_bad_override_names_the_flag(text):
    with pytest.raises(plan.UsageError) as err:
        plan.parse_override(text)
    assert err.value.flag == "--override"
    assert "--override" in str(err.value)


def test_overrides_body_nests_and_clears_the_other_budget_field():
    body = plan.overrides_body(
        [
            "training.max_epochs=3",
            "training.lr=0.003",
            "model.neuron_params.rho=0.98",
            "training.lr=0.001",
        ]  # fmt: skip
    )
    assert body == {
        "training": {"max_epochs": 3, "lr": 0.001, "max_steps": None},
        "model": {"neuron_params": {"rho": 0.98}},
    }
    assert plan.overrides_body(["training.max_steps=40"])["training"] == {
        "max_steps": 40,
        "max_epochs": None,
    }
    with pytest.raises(plan.UsageError, match="not both"):
        plan.overrides_body(["training.max_steps=40", "training.max_epochs=2"])


def test_deep_merge_merges_dicts_and_replaces_scalars_and_lists():
    base = {"model": {"hidden": [64, 88, 88], "neuron_params": {"rho": 0.99, "alpha": 0.5}}, "training": {"max_steps": 5}}  # fmt: skip
    over = {"model": {"hidden": [16], "neuron_params": {"rho": 0.98}}, "training": {"max_steps": None}}  # fmt: skip
    merged = plan.deep_merge(base, over)
    assert merged == {
        "model": {"hidden": [16], "neuron_params": {"rho": 0.98, "alpha": 0.5}},
        "training": {"max_steps": None},
    }
    assert base["model"]["hidden"] == [64, 88, 88]  # inputs untouched


def test_submit_body_and_command_line():
    body = plan.submit_body("demo/adding-tiny", {"training": {"max_steps": 8}}, {"job": "abc"})
    assert body == {
        "recipe": "demo/adding-tiny",
        "name": "reproduce:demo/adding-tiny",
        "training": {"max_steps": 8},
        "init_from": {"job": "abc"},
    }
    cmd = plan.command_line("paper/seq_mnist-83k", ["training.max_epochs=3", "model.hidden=[64, 88]"], "docs/results", cont=True)  # fmt: skip
    assert cmd == (
        "celif reproduce --recipes paper/seq_mnist-83k --override training.max_epochs=3 "
        "--override 'model.hidden=[64, 88]' --continue --out docs/results"
    )
    assert plan.recipe_of_job_name("reproduce:paper/x") == "paper/x"
    assert plan.recipe_of_job_name("paper/x") is None


# ----------------------------------------------------------------------------- state file
def test_state_round_trip(tmp_path):
    state = plan.State(url="http://h:1")
    rs = state.recipe("paper/seq_mnist-83k")
    rs.jobs.append({"id": "j1", "url": "http://h:1", "snapshot": {"status": "failed"}})
    rs.overrides = ["training.max_epochs=3"]
    rs.command = "celif reproduce ..."
    rs.checkpoints["latest"] = {"id": "c1", "step": 10, "sha256": "ab", "path": "checkpoints/x/latest.safetensors"}  # fmt: skip
    rs.uploads["ab"] = {"id": "u1", "url": "http://h:2"}
    path = plan.save_state(tmp_path / "out", state)
    assert path.name == plan.STATE_FILE and not list(path.parent.glob(".state-*"))
    again = plan.load_state(tmp_path / "out")
    assert again == state
    assert plan.load_state(tmp_path / "empty") == plan.State()


def test_state_file_unreadable_names_out(tmp_path):
    (tmp_path / plan.STATE_FILE).write_text(json.dumps({"version": 99}))
    with pytest.raises(plan.UsageError) as err:
        plan.load_state(tmp_path)
    assert err.value.flag == "--out"
    (tmp_path / plan.STATE_FILE).write_text("{not json")
    with pytest.raises(plan.UsageError):
        plan.load_state(tmp_path)


# ----------------------------------------------------------------------------- decisions
def _job(status, **training):
    return {"id": "j", "status": status, "spec": {"training": training or {"max_steps": 10}}}


def _decide(current, **kw):
    args = dict(known_elsewhere=False, wanted_spec={"training": {"max_steps": 10}}, has_checkpoint=False, saved_checkpoint=False, resubmit_failed=False, cont=False)  # fmt: skip
    return plan.decide(current, **{**args, **kw}).kind


def test_decide():
    assert _decide(None) == "submit"
    assert _decide(_job("queued")) == "follow"
    assert _decide(_job("running"), cont=True, resubmit_failed=True) == "follow"
    assert _decide(_job("succeeded")) == "report"
    assert _decide(_job("succeeded"), cont=True) == "report"  # same budget: nothing to do
    more = {"training": {"max_steps": 20}}
    assert _decide(_job("succeeded"), wanted_spec=more) == "report"  # only with --continue
    assert _decide(_job("succeeded"), wanted_spec=more, cont=True) == "continue"
    epochs = {"training": {"max_epochs": 3}}
    assert _decide(_job("succeeded", max_epochs=3), wanted_spec=epochs, cont=True) == "report"
    assert _decide(_job("succeeded", max_epochs=2), wanted_spec=epochs, cont=True) == "continue"
    # failed / cancelled: reported, never silently resubmitted
    for status in ("failed", "cancelled"):
        assert _decide(_job(status)) == "report"
        assert _decide(_job(status), resubmit_failed=True) == "submit"
        assert _decide(_job(status), cont=True, has_checkpoint=True) == "continue"
        assert _decide(_job(status), cont=True) == "submit"  # nothing to continue from
    # the service that ran the state file's jobs is gone
    assert _decide(None, known_elsewhere=True) == "submit"
    assert _decide(None, known_elsewhere=True, saved_checkpoint=True) == "submit"
    assert _decide(None, known_elsewhere=True, saved_checkpoint=True, cont=True) == "upload"
    # ...but a job that had finished there keeps its result: reported, not trained again
    gone = dict(known_elsewhere=True, saved_checkpoint=True)
    assert _decide(None, last_seen=_job("succeeded"), **gone) == "report"
    assert _decide(None, last_seen=_job("succeeded"), cont=True, **gone) == "report"
    assert _decide(None, last_seen=_job("succeeded"), cont=True, wanted_spec=more, **gone) == "upload"  # fmt: skip
    assert _decide(None, last_seen=_job("cancelled"), **gone) == "report"
    assert _decide(None, last_seen=_job("cancelled"), resubmit_failed=True, **gone) == "submit"
    assert _decide(None, last_seen=_job("running"), **gone) == "submit"  # died mid-run


def test_override_mismatches():
    spec = {"training": {"max_steps": 30, "lr": 0.005}, "model": {"neuron_params": {"rho": 0.99}}}
    assert plan.override_mismatches(spec, plan.overrides_body(["training.lr=0.005"])) == []
    assert plan.override_mismatches(
        spec, plan.overrides_body(["training.max_steps=40", "model.neuron_params.rho=0.98"])
    ) == [
        "training.max_steps is 30, asked 40",
        "model.neuron_params.rho is 0.99, asked 0.98",
    ]  # max_epochs: null matches a spec without it


def test_needs_more_budget():
    assert plan.needs_more_budget({"training": {"max_steps": 5}}, {"training": {"max_steps": 6}})
    assert not plan.needs_more_budget({"training": {"max_steps": 6}}, {"training": {"max_steps": 6}})  # fmt: skip
    assert plan.needs_more_budget({"training": {"max_steps": 6}}, {"training": {"max_epochs": 1, "max_steps": None}})  # fmt: skip
    assert not plan.needs_more_budget({"training": {"max_epochs": 9}}, {"training": {}})


# ----------------------------------------------------------------------------- report
RECIPE = {
    "name": "paper/seq_mnist-83k",
    "table": "Seq-MNIST / PS-MNIST (paper Table 2)",
    "reference": {
        "paper": {"metric": "test_accuracy", "value": 98.19},
        "neuroseqbench": {"metric": "test_accuracy", "value": 0.9776},
    },
}
JOB = {
    "id": "9bb6d35d4480428cba485cb85861aa09",
    "status": "succeeded",
    "spec": {"training": {"max_epochs": 3, "max_steps": None}},
    "progress": {"step": 690, "max_steps": 690, "fraction": 1.0},
    "latest_metrics": {"train_loss": 0.1, "val_accuracy": 0.95, "test_accuracy": 0.9712},
    "best_metrics": {"val_accuracy": 0.955, "step": 600},
    "error": None,
    "started_at": "2026-12-02T10:00:00Z",
    "finished_at": "2026-12-02T11:02:05.4Z",
}


def test_our_figure_prefers_test_then_best_val():
    fig = report.our_figure(JOB, "test_accuracy")
    assert (fig.metric, fig.value) == ("test_accuracy", 0.9712)
    running = {**JOB, "status": "running", "latest_metrics": {"val_accuracy": 0.9}}
    fig = report.our_figure(running, "test_accuracy")
    assert (fig.metric, fig.value, fig.note) == ("val_accuracy", 0.955, "best val, step 600")
    no_ref = {"latest_metrics": {"test_loss": 0.02, "test_mse": 0.02}, "best_metrics": {}}
    assert report.our_figure(no_ref, None).metric == "test_mse"
    running = {"latest_metrics": {}, "best_metrics": {"val_loss": 0.5, "val_accuracy": 0.8}}
    assert report.our_figure(running, None).metric == "val_accuracy"
    assert report.our_figure({"latest_metrics": {}, "best_metrics": {}}, None).value is None


def test_row_and_markdown():
    row = report.build_row(RECIPE, JOB, [], "celif reproduce --recipes paper/seq_mnist-83k --out d")  # fmt: skip
    assert row.ours == "97.12 %" and row.metric == "test_accuracy"
    # references stored as a fraction or in percent read the same
    assert row.paper == "98.19 %" and row.neuroseqbench == "97.76 %"
    assert row.diff_paper == "-1.07 pp" and row.diff_neuroseqbench == "-0.64 pp"
    assert row.budget == "690/690 steps (3.0/3 epochs)"
    assert row.wall == "1h 02m" and row.status == "succeeded"
    progress = {"step": 230, "max_steps": 690, "fraction": 0.333, "epoch": 0.999, "max_epochs": 3}
    assert report.fmt_budget({**JOB, "progress": progress}) == "230/690 steps (1.0/3 epochs)"
    mse_recipe = {"name": "paper/adding-100", "table": "Adding", "reference": {"paper": {"metric": "test_mse", "value": 0.01}, "neuroseqbench": None}}  # fmt: skip
    failed = {
        **JOB, "id": "f" * 32, "status": "failed", "error": "diverged | loss nan\nat step 3",
        "latest_metrics": {}, "best_metrics": {"val_mse": 0.0123, "step": 40},
        "spec": {"training": {"max_steps": 100}, "init_from": {"job": "abcdef0123456789"}},
        "progress": {"step": 40, "max_steps": 100, "fraction": 0.4}, "finished_at": None,
    }  # fmt: skip
    row2 = report.build_row(mse_recipe, failed, [{"epoch": 0}], "c2", now=datetime(2026, 12, 2, 10, 0, 42, tzinfo=UTC))  # fmt: skip
    assert row2.ours == "0.0123" and row2.metric == "val_mse" and row2.diff_paper == "+0.0023"
    assert row2.neuroseqbench == "-" and row2.diff_neuroseqbench == "-"
    assert row2.status.startswith("failed: diverged / loss nan at step 3")
    assert "(continued from job abcdef01)" in row2.status and row2.wall == "42 s"
    uploaded = {**failed, "spec": {"init_from": {"job": None, "upload": "0123456789ab"}}}
    assert "(continued from uploaded checkpoint 01234567)" in report.fmt_status(uploaded)
    waiting = {**JOB, "status": "queued", "error": None, "queue": "gpu", "queue_has_worker": False,
               "waiting_for": "a GPU worker: none is online (last seen 12 min ago)"}  # fmt: skip
    assert report.fmt_status(waiting) == (
        "queued, waiting for a GPU worker: none is online (last seen 12 min ago)"
    )
    row3 = report.build_row({"name": "demo/x", "reference": {}}, None, None, "c3")
    md = report.render_markdown(
        [row, row2, row3],
        url="http://127.0.0.1:8000",
        generated=datetime(2026, 12, 2, 12, 0, tzinfo=UTC),
        table_plots={RECIPE["table"]: "curves/table-x.png"},
        job_plots={"paper/seq_mnist-83k": "curves/paper_seq_mnist-83k.png"},
    )
    assert md.index("## Seq-MNIST / PS-MNIST (paper Table 2)") < md.index("## Adding") < md.index("## Other recipes")  # fmt: skip
    line = next(ln for ln in md.splitlines() if ln.startswith("| `paper/seq_mnist-83k`"))
    cells = [c.strip() for c in line.strip("|").split(" | ")]
    assert cells == [
        "`paper/seq_mnist-83k`", "test_accuracy", "97.12 % (final model, test set)", "98.19 %",
        "97.76 %", "-1.07 pp", "-0.64 pp", "succeeded", "690/690 steps (3.0/3 epochs)", "1h 02m",
        "`celif reproduce --recipes paper/seq_mnist-83k --out d`",
    ]  # fmt: skip
    assert "![Seq-MNIST / PS-MNIST (paper Table 2): validation curves](curves/table-x.png)" in md
    assert (
        f"- `paper/seq_mnist-83k`: job `{JOB['id']}`, [curves](curves/paper_seq_mnist-83k.png)"
        in md
    )
    assert "- `demo/x`: no job" in md
    assert "| `demo/x` | - | - |" in md and "not submitted" in md
    # every table row has the header's 11 cells (a '|' inside a cell is escaped)
    for ln in md.splitlines():
        if ln.startswith("| `"):
            assert len(ln.replace("\\|", "").strip("|").split(" | ")) == 11, ln


def test_smooth():
    assert report.smooth([3.0, 1.0]) == [3.0, 1.0]
    ys = [float(i % 2) for i in range(1000)]  # window 5
    out = report.smooth(ys)
    assert len(out) == 1000 and out[:2] == [0.0, 0.5]
    assert all(abs(v - 0.5) <= 0.1 for v in out[10:])


def test_plot_table_is_a_png():
    points = [
        {"split": "val", "name": "accuracy", "step": s, "value": v}
        for s, v in [(10, 0.5), (20, 0.7), (30, 0.8)]
    ] + [{"split": "train", "name": "loss", "step": s, "value": 2.0 / s} for s in range(1, 31)]
    png = report.plot_table("Table 2", [("a", "accuracy", points), ("b", "accuracy", [])])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert report.plot_table("empty", [])[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- client / CLI
def test_format_detail_of_a_422():
    detail = [{"loc": ["body", "training", "max_epochs"], "msg": "must be > 0"}, {"loc": ["body"], "msg": "x"}]  # fmt: skip
    assert format_detail(detail) == "training.max_epochs: must be > 0; x"


def test_wrong_url_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, "t", timeout=5) as client, pytest.raises(ApiError) as err:
        client.check()
    assert url in str(err.value) and "--url" in str(err.value)


def test_cli_bad_args_name_the_flag(tmp_path):
    def celif(*args, env=None):
        return subprocess.run(
            [sys.executable, "-m", "celif_cli.main", "reproduce", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    no_token = {k: v for k, v in __import__("os").environ.items() if k != "CELIF_TOKEN"}
    r = celif("--recipes", "x", "--out", str(tmp_path), env=no_token)
    assert r.returncode == 2 and "--token" in r.stderr
    r = celif("--token", "t", "--override", "bogus", "--out", str(tmp_path))
    assert r.returncode == 2 and "--override" in r.stderr
    r = celif("--token", "t", "--url", "localhost:8000")
    assert r.returncode == 2 and "--url" in r.stderr
    r = celif("--token", "t", "--poll", "0")
    assert r.returncode == 2 and "--poll" in r.stderr
    r = celif("--token", "t", "--no-follow", "--wait")
    assert r.returncode == 2 and "--wait" in r.stderr
    r = celif("--token", "t", "--url", f"http://127.0.0.1:{free_port()}", "--recipes", "x", "--out", str(tmp_path))  # fmt: skip
    assert r.returncode == 1 and "cannot reach the service" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
