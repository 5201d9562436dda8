"""A job too big for its worker: out of memory is the job's own error (failed once, with the
reason), never an infrastructure retry. Against the real worker process of the session stack."""

from __future__ import annotations

from sqlalchemy import select

from jobstore.db.models import Job, JobEvent
from jobstore.settings import Settings
from service.auth.service import get_or_create_user
from service.jobs.service import submit_job
from tests.worker.conftest import Stack, WorkerProcess, adding_spec, wait_for

NO_PARAMETER_LIMIT = str(2**62)


def test_out_of_memory_fails_the_job_once_with_the_reason(stack: Stack):
    # The API's limits refuse this spec (a TE table of 4e12 parameters, 16 TB); a deployment
    # whose limits are above what its workers can allocate would not. So: submit through the
    # service layer with the parameter limit lifted, to a worker with the same lifted limit,
    # and the allocation itself fails in the pool process.
    for w in stack.workers:
        w.kill()  # the shared worker has the default limits and would refuse the spec
    env = {**stack.env, "CELIF_MAX_PARAMETERS": NO_PARAMETER_LIMIT}
    worker = WorkerProcess(env, stack.logs / "worker-oom.log").start()
    stack.workers.append(worker)
    try:
        settings = Settings(
            data_dir=stack.data_dir,
            database_url=stack.database_url,
            broker_url=stack.env["CELIF_BROKER_URL"],
            max_parameters=int(NO_PARAMETER_LIMIT),
        )
        spec = adding_spec()
        spec["model"] = {"neuron": "celif", "hidden": [4096], "te_length": 1_000_000_000}
        with stack.session() as session:
            user = get_or_create_user(session, "oom-tester")
            job_id = submit_job(session, user, spec, settings).job.id

        def finished():
            with stack.session() as session:
                job = session.get(Job, job_id)
                return job if job.status in ("failed", "succeeded", "cancelled") else None

        job = wait_for(finished, 120, f"job {job_id} finished", 0.2)
        assert job.status == "failed", job.error
        assert job.attempts == 1
        assert job.error.startswith("out of memory: ") and "can't allocate memory" in job.error
        assert "te_length" in job.error  # says what to lower
        with stack.session() as session:
            statuses = [
                e.data["status"]
                for e in session.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
                    .order_by(JobEvent.id)
                )
            ]
        assert statuses == ["queued", "running", "failed"]  # no "infrastructure error, retrying"
        assert worker.alive()  # the worker itself survives its job's failure
    finally:
        worker.kill()
