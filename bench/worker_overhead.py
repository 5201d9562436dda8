"""Cost of the worker's reporting on training speed (DESIGN.md §6: at most a few percent).

Times `Trainer.train()` for the same spec run (a) bare, with no callbacks, and (b) inside the
worker's `JobRunner` (metric batches to the database, heartbeat + cancel polling thread,
checkpoint registration and retention), alternating, and prints the ratio of the medians.

    python bench/worker_overhead.py                                   # temp SQLite database
    python bench/worker_overhead.py --database-url postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SPEC = {
    "task": {"name": "adding", "params": {"seq_len": 100, "val_size": 256, "test_size": 256}},
    "model": {"neuron": "celif", "hidden": [64, 64]},
    "training": {
        "max_steps": 300,
        "batch_size": 128,
        "eval_batch_size": 256,
        "lr": 0.003,
        "eval_every": 100,
        "checkpoint_every": 100,
        "device": "cpu",
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--database-url", default=None, help="default: a temp SQLite file (migrated)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    SPEC["training"]["max_steps"] = args.steps

    import torch

    import celif_core.trainer as trainer_mod
    import jobstore.queue
    from celif_core.spec import validate_spec
    from jobstore.db.migrate import upgrade_database
    from jobstore.db.models import Job
    from jobstore.db.session import session_scope
    from jobstore.settings import Settings
    from service.auth.service import get_or_create_user
    from worker.runner import JobRunner

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="celif-overhead-"))
    url = args.database_url or f"sqlite:///{tmp / 'celif.db'}"
    upgrade_database(url)
    settings = Settings(database_url=url, broker_url="filesystem://", data_dir=tmp)
    jobstore.queue.enqueue_job = lambda job_id: None  # nothing is re-queued here

    timings: dict[str, list[float]] = {"bare": [], "worker": []}
    cpu: dict[str, list[float]] = {"bare": [], "worker": []}
    current: list[str] = []
    original = trainer_mod.Trainer.train

    def timed(self):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return original(self)
        finally:
            timings[current[-1]].append(time.perf_counter() - t0)
            cpu[current[-1]].append(time.process_time() - c0)  # all threads of the process

    trainer_mod.Trainer.train = timed
    spec = validate_spec(SPEC)
    for i in range(args.repeats):
        current.append("bare")
        t = trainer_mod.Trainer(spec, checkpoint_dir=tmp / f"bare-{i}")
        t.setup()
        t.train()

        current.append("worker")
        with session_scope(url) as s:
            user = get_or_create_user(s, "overhead-bench")
            job = Job(owner_id=user.id, task_name="adding", neuron="celif", spec=spec.to_dict(),
                      max_steps=spec.training.max_steps)  # fmt: skip
            s.add(job)
            s.flush()
            job_id = job.id
        outcome = JobRunner(job_id, settings).run()
        assert outcome == "succeeded", outcome
        with session_scope(url) as s:
            from sqlalchemy import func, select

            from jobstore.db.models import JobEvent

            n = s.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        print(f"run {i}: wall bare {timings['bare'][-1]:.2f} s / worker {timings['worker'][-1]:.2f} s, "
              f"cpu {cpu['bare'][-1]:.2f} / {cpu['worker'][-1]:.2f} s ({n} events stored)")  # fmt: skip

    steps = spec.training.max_steps
    print(f"database: {url.split('://')[0]}; {steps} steps, median of {args.repeats}")
    for label, data in (("wall", timings), ("cpu", cpu)):
        bare, worker = statistics.median(data["bare"]), statistics.median(data["worker"])
        print(f"{label:4s}: bare {bare:.2f} s ({steps / bare:.1f} steps/s), worker {worker:.2f} s "
              f"({steps / worker:.1f} steps/s), overhead {100 * (worker / bare - 1):+.1f} %")  # fmt: skip


if __name__ == "__main__":
    main()
