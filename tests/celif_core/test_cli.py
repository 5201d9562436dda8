"""`celif train` (celif_core.cli.main): a local run, its output, and its argument errors."""

from __future__ import annotations

import csv
import json
import urllib.request

import pytest

from celif_core.checkpoint import read_metadata
from celif_core.cli import main

SMALL = ["--task", "adding", "--seq-len", "15", "--hidden", "8", "8", "--max-steps", "4",
         "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "2", "--no-progress"]  # fmt: skip


def test_train_writes_checkpoints_and_prints_the_test_metric(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out), "--lr", "0.01", "--surrogate-width", "1.0"]) == 0
    stdout = capsys.readouterr().out
    assert "test mse:" in stdout and "baseline mse: 0.1667" in stdout
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors")
    assert files == ["step_00000002.safetensors", "step_00000004.safetensors"]
    # metrics (CSV and JSON) and the curves (PNG) beside the checkpoints
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["split"], r["name"]) for r in rows} >= {("train", "loss"), ("val", "mse")}
    assert {int(r["step"]) for r in rows if r["split"] == "val"} == {2, 4}
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["step"] == 4 and summary["best"]["step"] in (2, 4)
    assert len(summary["points"]) == len(rows)
    assert summary["metrics"]["test_mse"] == pytest.approx(
        float(stdout.split("test mse: ")[1]), abs=1e-4
    )
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "metrics.csv" in stdout
    meta = read_metadata(out / files[-1])
    assert meta["spec"]["task"]["params"]["seq_len"] == 15
    assert meta["spec"]["model"]["hidden"] == [8, 8]
    assert meta["spec"]["model"]["neuron_params"]["surrogate_width"] == 1.0
    assert meta["spec"]["training"]["lr"] == 0.01

    # resume from the last checkpoint with a longer budget
    more = [a if a != "4" else "6" for a in SMALL]
    assert main([*more, "--out", str(out), "--resume", str(out / files[-1])]) == 0
    assert (out / "step_00000006.safetensors").is_file()


def test_progress_bar_runs(tmp_path, capsys):
    args = ["--task", "copy_memory", "--delay", "3", *SMALL[4:-1]]
    assert main([*args, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "test loss:" in captured.out
    assert "step" in captured.err  # tqdm writes to stderr


def test_neuroseqbench_reading_flags_reach_the_spec():
    from celif_core.cli import build_parser, spec_from_args

    argv = ["--ce-timing", "previous", "--te-init-mean", "0.01", "--te-init-std", "0.01"]
    np_ = spec_from_args(build_parser().parse_args(argv))["model"]["neuron_params"]
    assert np_ == {"ce_timing": "previous", "te_init_mean": 0.01, "te_init_std": 0.01}


def test_bad_flag_value_names_the_flag(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--task", "adding", "--max-steps", "many"])
    assert err.value.code == 2
    assert "--max-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--neuron", "hodgkin"])
    assert "--neuron" in capsys.readouterr().err


def test_bad_spec_names_the_field(tmp_path, capsys):
    assert main(["--task", "adding", "--seq-len", "-3", "--out", str(tmp_path)]) == 2
    assert "task.params.seq_len" in capsys.readouterr().err
    assert main(["--task", "seq_mnist", "--te-length", "100", "--out", str(tmp_path)]) == 2
    assert "model.te_length" in capsys.readouterr().err


def test_missing_mnist_names_the_setting(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["--task", "seq_mnist", "--hidden", "8", "--max-steps", "1", "--no-progress",
                 "--mnist-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "CELIF_MNIST_DIR" in err and "--mnist-dir" in err and "train-images-idx3-ubyte.gz" in err
