"""Where the time of one /predict request goes: the request's pipeline run in one thread (JSON
parse, body validation, token check, job/checkpoint reads, input checks, forward, response
building, JSON render), each stage timed, and the whole profiled with pyinstrument.

    python bench/profile_predict.py [--hidden 64,256,256] [--requests 200] [--html out.html]

Self-contained: a temp SQLite database, an untrained seq_mnist checkpoint of the given size
(celif_core's Trainer), one user and token. Needs the `dev` extra (pyinstrument).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def setup(tmp: Path, hidden: list[int], checkpoint: Path | None = None):
    """A temp SQLite database with one user and a finished seq_mnist job: its checkpoint an
    untrained model of `hidden`, or the file `checkpoint` (e.g. a shipped trained one)."""
    from celif_core.trainer import DataDirs, Trainer
    from jobstore.db.migrate import upgrade_database
    from jobstore.db.session import session_scope
    from jobstore.settings import Settings
    from service.auth.service import create_user_and_token
    from tests.service.predict_helpers import MNIST_DIR, Trained, make_job

    settings = Settings(data_dir=tmp / "data", mnist_dir=MNIST_DIR)
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url)
    with session_scope(settings.database_url) as s:
        token = create_user_and_token(s, "alice")
    if checkpoint is not None:
        from celif_core.checkpoint import load_model
        from celif_core.spec import JobSpec

        _, spec, metadata = load_model(checkpoint)
        spec = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        trained = Trained(spec.to_dict(), Path(checkpoint), int(metadata.get("step", 0)))
    else:
        spec = {
            "task": {"name": "seq_mnist", "params": {"val_size": 100, "train_subset": 64}},
            "model": {"neuron": "celif", "hidden": hidden},
            "training": {"max_steps": 1, "batch_size": 16, "device": "cpu"},
        }
        data_dirs = DataDirs(mnist=MNIST_DIR)
        trainer = Trainer(spec, checkpoint_dir=tmp / "ckpt", data_dirs=data_dirs)
        trainer.setup()
        info = trainer.save_checkpoint()
        trained = Trained(trainer.spec.to_dict(), Path(info.path), info.step)
    job_id = make_job(settings.database_url, settings.storage_dir, trained)
    return settings, token, job_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--hidden", default="64,256,256")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--html", type=Path)
    args = p.parse_args(argv)

    from fastapi.encoders import jsonable_encoder
    from fastapi.security import HTTPAuthorizationCredentials
    from pyinstrument import Profiler

    from jobstore.db.session import get_sessionmaker
    from service.deps import end_unit_of_work, get_current_user
    from service.predict import service
    from service.predict.schemas import PredictRequest, PredictResponse

    with tempfile.TemporaryDirectory(prefix="celif-prof-") as tmp:
        settings, token, job_id = setup(Path(tmp), [int(h) for h in args.hidden.split(",")])
        factory = get_sessionmaker(settings.database_url)

        class State:
            pass

        runtime = service.get_runtime(State(), settings)
        x = np.random.default_rng(0).random((1, 784)).round(4)
        raw = json.dumps({"inputs": x.tolist()}).encode()
        creds = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
        stages: dict[str, list[float]] = {}

        def timed(name, fn, *a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            stages.setdefault(name, []).append(time.perf_counter() - t)
            return out

        def one():
            started = time.perf_counter()
            body = timed(
                "json parse + body model", lambda: PredictRequest.model_validate(json.loads(raw))
            )
            session = factory()
            user = timed("auth (token lookup)", get_current_user, session, creds)
            returns = list(body.return_)
            target = timed("job + checkpoint reads, input checks", service.predict_target, session, user, job_id, inputs=body.inputs, checkpoint=body.checkpoint, returns=returns, spikes_layer=0, settings=settings)  # fmt: skip
            timed("commit + close session", end_unit_of_work, session)
            loaded, _ = service._load(runtime, target.checkpoint, target.path)
            from service import inference

            timed("forward + response dict", inference.predict, loaded, target.inputs)
            out = timed("predict (cache get + forward + dict)", service.predict, target, returns=returns, spikes_layer=0, runtime=runtime, started=started)  # fmt: skip
            timed("response model + JSON render", lambda: json.dumps(jsonable_encoder(PredictResponse.model_validate(out))).encode())  # fmt: skip
            stages.setdefault("total (forward twice)", []).append(time.perf_counter() - started)

        for _ in range(10):
            one()
        stages.clear()
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(args.requests):
            one()
        profiler.stop()
        print(f"model {args.hidden}, one 784-step sequence, {args.requests} requests in one thread")
        print("| stage | median ms | mean ms |")
        print("| --- | ---: | ---: |")
        for name, values in stages.items():
            print(f"| {name} | {1000 * statistics.median(values):.3f} | {1000 * statistics.fmean(values):.3f} |")  # fmt: skip
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        if args.html:
            args.html.write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    sys.exit(main())
