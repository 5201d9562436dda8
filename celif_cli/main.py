"""The `celif` console script.

    celif serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR] [--demo]
    celif worker [--data-dir DIR] [--queues gpu,cpu,any|all] [--loglevel INFO]
    celif worker --ping [--worker-id ID]     (exit 0 when this host's worker is online)
    celif token create --name NAME [--data-dir DIR]
    celif db upgrade [--data-dir DIR]
    celif reproduce --recipes NAME|GLOB|SET ... [--url URL] [--token T] [--out DIR] ...
    celif train ...            (the library's trainer without a server: celif_core.cli)

Settings come from CELIF_* environment variables / `.env` (jobstore/settings.py); `--data-dir`
overrides the data directory (for `serve`, also in the workers it starts). Nothing here imports torch except `train`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("celif")

DEMO_SPEC = {
    "name": "demo-adding",
    "task": {"name": "adding", "params": {"seq_len": 20}},
    "model": {"neuron": "celif", "hidden": [32, 32]},
    "training": {
        "max_steps": 300,
        "batch_size": 64,
        "lr": 0.005,
        "eval_every": 50,
        "checkpoint_every": 100,
    },
}


# ----------------------------------------------------------------------------- settings
def _apply_data_dir(data_dir: str | None):
    """The process's settings, with `--data-dir` on top of the environment when given."""
    from jobstore.settings import configure_settings

    if data_dir is None:
        return configure_settings()
    return configure_settings(data_dir=Path(data_dir).expanduser().resolve())


def _prepare_dirs(settings) -> None:
    for path in (settings.data_dir, settings.storage_dir):
        Path(path).mkdir(parents=True, exist_ok=True)


def _upgrade(settings) -> None:
    from jobstore.db.migrate import upgrade_database

    _prepare_dirs(settings)
    upgrade_database(settings.database_url)


# ----------------------------------------------------------------------------- commands
def cmd_db_upgrade(args) -> int:
    settings = _apply_data_dir(args.data_dir)
    _upgrade(settings)
    print(f"database at {_redact(settings.database_url)} is up to date", file=sys.stderr)
    return 0


def cmd_token_create(args) -> int:
    settings = _apply_data_dir(args.data_dir)
    if settings.embedded:  # a fresh data dir has no tables yet
        _upgrade(settings)
    from jobstore.db.session import session_scope
    from service.auth.service import create_user_and_token

    with session_scope(settings.database_url) as session:
        token = create_user_and_token(session, args.name)
    print(token)  # alone on stdout, so `TOKEN=$(celif token create --name me)` works
    return 0


def worker_argv(queues: str, loglevel: str, concurrency: int = 1) -> list[str]:
    quiet = ["--quiet"] if loglevel in ("WARNING", "ERROR") else []  # no banner
    return [
        *quiet,
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        "--pool=prefork",  # the job runs in a forked child: CUDA is initialised there only
        f"--queues={queues}",
        f"--hostname=celif-{os.getpid()}@%h",
        "--without-mingle",
        "--without-gossip",
    ]


def cmd_worker(args) -> int:
    settings = _apply_data_dir(args.data_dir)
    if args.ping:
        return ping_worker(settings, args.worker_id)
    if args.worker_id is not None:
        print("celif worker: --worker-id goes with --ping", file=sys.stderr)
        return 2
    from jobstore.queue import QUEUES
    from worker.devices import detect_devices

    devices = detect_devices()
    every = args.queues == ("all",)
    kinds = tuple(QUEUES) if every else args.queues
    kinds = kinds or (("gpu", "any") if "cuda" in devices else ("cpu", "any"))
    if "gpu" in kinds and "cuda" not in devices and not every:
        # `all` (the embedded worker) is exempt: on one machine no GPU worker will ever come,
        # so a cuda job there fails at once with the trainer's "no CUDA device" instead.
        print(
            "celif worker: --queues gpu needs a CUDA device and torch sees none on this host; "
            "use --queues cpu,any (or leave --queues out: it follows the devices found)",
            file=sys.stderr,
        )
        return 2
    _prepare_dirs(settings)
    from worker.app import DEVICES_CONF_KEY, celery_app

    celery_app.conf[DEVICES_CONF_KEY] = list(devices)
    names = ",".join(QUEUES[k] for k in kinds)
    celery_app.worker_main(argv=worker_argv(names, args.loglevel))
    return 0


def ping_worker(settings, worker_id: str | None = None) -> int:
    """The health check: 0 when a worker of this host (or the one named) has refreshed its
    registry row within `worker_offline_after_s` and not stopped; 1 otherwise, saying why.
    Reads the database only (no broker, no torch): fast enough for a container HEALTHCHECK,
    and it fails when the worker cannot reach the database it needs to claim jobs."""
    import socket

    from jobstore import workers
    from jobstore.db.session import session_scope

    host = socket.gethostname()
    who = f"worker {worker_id}" if worker_id else f"a worker on host {host}"
    if settings.database_url.startswith("sqlite:///"):
        path = Path(settings.database_url.removeprefix("sqlite:///"))
        if not path.exists():
            print(f"celif worker --ping: no database at {path}: no worker ever ran here", file=sys.stderr)  # fmt: skip
            return 1
    try:
        with session_scope(settings.database_url) as session:
            census = workers.census(session, settings.worker_offline_after_s)
    except Exception as exc:
        print(f"celif worker --ping: cannot read the worker registry: {exc}", file=sys.stderr)
        return 1
    mine = [w for w in census.workers if (w.id == worker_id if worker_id else w.host == host)]
    for w in mine:
        if w.online:
            seen = workers.ago(census.now - w.last_seen)
            print(f"ok: worker {w.id} online, queues {','.join(w.queues)}, last seen {seen}")
            return 0
    if not mine:
        print(f"celif worker --ping: {who} has never announced itself", file=sys.stderr)
        return 1
    last = max(mine, key=lambda w: w.last_seen)
    print(
        f"celif worker --ping: {who} is offline: {last.id} last seen "
        f"{workers.ago(census.now - last.last_seen)} (offline after "
        f"{settings.worker_offline_after_s:g} s without a refresh, or stopped)",
        file=sys.stderr,
    )
    return 1


def cmd_reproduce(args) -> int:
    """Thin glue: the flow lives in celif_cli/reproduce/ (an HTTP client of the service)."""
    from celif_cli.reproduce.api import ApiError
    from celif_cli.reproduce.plan import UsageError
    from celif_cli.reproduce.runner import Options, run

    try:
        if not args.token:
            raise UsageError("--token", "no API token: pass --token or set CELIF_TOKEN")
        opts = Options(
            url=args.url,
            token=args.token,
            out=Path(args.out),
            recipes=args.recipes or [],
            overrides=args.override or [],
            follow=not args.no_follow,
            quiet_wait=args.wait,
            resubmit_failed=args.resubmit_failed,
            cont=args.cont,
            save_checkpoints=args.save_checkpoints,
            poll_s=args.poll,
            timeout_s=args.timeout,
        )
        return run(opts)
    except UsageError as exc:
        print(f"celif reproduce: error: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"celif reproduce: error: {exc}", file=sys.stderr)
        return 1


def cmd_train(argv: list[str]) -> int:
    from celif_core.cli import main as train_main

    return int(train_main(argv) or 0)


# ----------------------------------------------------------------------------- serve
class WorkerSupervisor:
    """Runs one `celif worker` child process and restarts it when it dies."""

    def __init__(self, env: dict[str, str], loglevel: str = "INFO"):
        self.env = env
        self.loglevel = loglevel
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen:
        # One machine: the embedded worker takes every queue (a cuda job on a host without CUDA
        # fails with the trainer's message rather than waiting for a GPU worker that never comes).
        cmd = [sys.executable, "-m", "celif_cli.main", "worker", "--queues", "all"]
        cmd += ["--loglevel", self.loglevel]
        # Own process group: a stop takes down the pool child too. If `celif serve` itself is
        # killed, the kernel sends the worker SIGTERM (Linux), so no orphan keeps training.
        return subprocess.Popen(
            cmd, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )

    def start(self) -> None:
        self.proc = self._spawn()
        self._thread.start()

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.wait(1.0):
            if self.proc is None or self.proc.poll() is None:
                continue
            code = self.proc.returncode
            _kill_group(self.proc.pid)  # a pool child of the dead worker, if one is left
            log.warning("worker process exited (code %s); restarting in %.0fs", code, backoff)
            if self._stop.wait(backoff):
                return
            self.proc = self._spawn()
            self.restarts += 1
            backoff = min(backoff * 2, 30.0)

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown: SIGTERM to the worker's main process only, so a running job
        checkpoints and re-queues itself (worker/app.py); SIGKILL to the group after `timeout`."""
        self._stop.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.terminate()
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
        _kill_group(proc.pid)  # nothing of the worker outlives `celif serve`


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a worker's process group (its own session, see `_spawn`)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child before exec: ask for SIGTERM when the parent dies (Linux prctl)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _first_start_token(settings) -> str | None:
    """On a database with no users, create the admin user and return its token."""
    from sqlalchemy import func, select

    from jobstore.db.models import User
    from jobstore.db.session import session_scope
    from service.auth.service import create_user_and_token

    with session_scope(settings.database_url) as session:
        if session.scalar(select(func.count()).select_from(User)):
            return None
        return create_user_and_token(session, "admin", "first-start")


def _submit_demo(base_url: str, settings, deadline_s: float = 120.0) -> None:
    import httpx

    from jobstore.db.session import session_scope
    from service.auth.service import create_token, get_or_create_user

    with session_scope(settings.database_url) as session:
        token = create_token(session, get_or_create_user(session, "admin"), "demo")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    r = httpx.post(
        f"{base_url}/api/v1/jobs",
        json=DEMO_SPEC,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    r.raise_for_status()
    job_id = r.json()["id"]
    print(f"Demo job submitted: {base_url}/api/v1/jobs/{job_id}", flush=True)
    print(f"  dashboard: {base_url}/#/jobs/{job_id}", flush=True)
    # Follow it to the end, so the newcomer sees it train without opening anything.
    job = r.json()
    end = time.monotonic() + 600
    said_why, last_said = False, -1
    while not job["finished"] and time.monotonic() < end:
        time.sleep(1.0)
        job = httpx.get(
            f"{base_url}/api/v1/jobs/{job_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        step = job["progress"]["step"]
        if job["status"] == "running" and step == 0 and not said_why:
            said_why = True
            print(
                "  Demo job running, at step 0 while the fused C++ neuron kernel is compiled "
                "(first use on this machine only, about a minute; cached afterwards) ...",
                flush=True,
            )
        elif step >= last_said + 100:
            last_said = step - step % 100
            print(f"  Demo job at step {step}/{job['progress']['max_steps']}", flush=True)
    best = ", ".join(f"{k} {v:.4g}" for k, v in sorted(job["best_metrics"].items()) if k != "step")
    print(
        f"Demo job {job['status']} at step {job['progress']['step']}: {best} "
        "(adding problem: predicting the mean scores MSE 0.167)",
        flush=True,
    )
    print(f"  learning curves: {base_url}/api/v1/jobs/{job_id}/curves.png", flush=True)


def cmd_recipes(args) -> int:
    """The recipe catalog (the same as GET /api/v1/recipes; no server needed)."""
    from celif_core.recipes import RECIPES

    if args.name is not None:
        recipe = RECIPES.get(args.name)
        if recipe is None:
            print(f"celif recipes: unknown recipe {args.name!r}", file=sys.stderr)
            return 2
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    width = max(len(n) for n in RECIPES)
    for recipe in RECIPES.values():
        refs = [
            f"{who} {ref['metric']} {ref['value']:g}"
            for who, ref in (("paper", recipe.paper), ("neuroseqbench", recipe.neuroseqbench))
            if ref is not None
        ]
        print(
            f"{recipe.name:<{width}}  {recipe.table}" + (f"  [{'; '.join(refs)}]" if refs else "")
        )
    return 0


def cmd_serve(args) -> int:
    settings = _apply_data_dir(args.data_dir)
    _upgrade(settings)
    import uvicorn

    from service.app import create_app
    from worker.reaper import start_reaper_thread

    token = _first_start_token(settings)
    env = dict(os.environ, CELIF_DATA_DIR=str(Path(settings.data_dir).resolve()))
    supervisor = WorkerSupervisor(env, args.loglevel)
    supervisor.start()
    stop_reaper = start_reaper_thread(settings)

    url = f"http://{args.host}:{args.port}"
    print(f"CE-LIF training service: {url}", flush=True)
    print(f"  API docs: {url}/docs   data dir: {Path(settings.data_dir).resolve()}", flush=True)
    if token:
        rule = "=" * max(72, len(token) + 10)
        print(rule, flush=True)
        print("  First start: an admin token was created. It is shown ONCE; keep it:", flush=True)
        print(f"  TOKEN={token}", flush=True)
        print(
            '  (paste it into the dashboard; for curl: -H "Authorization: Bearer $TOKEN")',
            flush=True,
        )
        print(rule, flush=True)
    if args.demo:
        # The demo polls its job every second: httpx's own INFO line per request is noise.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        threading.Thread(target=_demo_thread, args=(url, settings), daemon=True).start()
    try:
        uvicorn.run(
            create_app(settings), host=args.host, port=args.port, log_level=args.loglevel.lower()
        )
    finally:
        stop_reaper.set()
        supervisor.stop()
    return 0


def _demo_thread(url: str, settings) -> None:
    try:
        _submit_demo(url, settings)
    except Exception:
        log.exception("could not submit the demo job")


# ----------------------------------------------------------------------------- parsing
def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celif", description="CE-LIF training service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", help="root of everything kept (sets CELIF_DATA_DIR)")
    loglevel = argparse.ArgumentParser(add_help=False)
    loglevel.add_argument(
        "--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )

    p = sub.add_parser(
        "serve",
        parents=[data_dir, loglevel],
        help="embedded default: SQLite + filesystem broker, API + one supervised worker",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--demo", action="store_true", help="also submit a small demo job")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", parents=[data_dir, loglevel], help="run one Celery worker")
    p.add_argument(
        "--queues",
        type=_queue_kinds,
        default=None,
        metavar="KINDS",
        help="queues to consume, comma-separated: gpu (cuda jobs), cpu (cpu jobs), any (auto "
        "jobs), or all; default: gpu,any with a CUDA device, cpu,any without",
    )
    p.add_argument(
        "--ping",
        action="store_true",
        help="health check: exit 0 when this host's worker is online (its registry row fresh)",
    )
    p.add_argument("--worker-id", help="with --ping: this worker (celif-PID@HOST), not any")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = tsub.add_parser("create", parents=[data_dir], help="create a token; prints it alone")
    t.add_argument("--name", required=True, help="user name (created if absent)")
    t.set_defaults(func=cmd_token_create)

    p = sub.add_parser("db", help="database")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    d = dsub.add_parser("upgrade", parents=[data_dir], help="apply migrations")
    d.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("recipes", help="list the named recipes (or print one's spec)")
    p.add_argument("name", nargs="?", help="print this recipe as JSON")
    p.set_defaults(func=cmd_recipes)

    _add_reproduce(sub)
    _add_study(sub)
    sub.add_parser("train", help="train a spec locally without a server (celif train --help)")
    return parser


REPRODUCE_EPILOG = """\
Restartable: the output folder's reproduce-state.json (recipe -> job ids, URL) and the jobs
named reproduce:<recipe> on the service are looked up first, so a second call submits nothing
new; it follows what runs and rewrites the report. A failed or cancelled job is reported, not
resubmitted (--resubmit-failed, or --continue from its latest checkpoint).

examples:
  celif reproduce --recipes 'paper/seq_mnist-*' --override training.max_epochs=3 --out docs/results
  celif reproduce --recipes paper --no-follow --out docs/results     # submit and exit
  celif reproduce --out docs/results                                 # follow/report what it holds
  celif reproduce --out docs/results --continue --save-checkpoints   # after a service restart
"""


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="submit recipes to a running service, follow them, write a report",
        description="Submit named recipes to a running celif service through its HTTP API "
        "(as any client would), follow the jobs and write a report into --out: reproduce.md "
        "(one table per recipe table: ours vs the paper's and neuroseqbench's figures) and PNG "
        "curves under curves/.",
        epilog=REPRODUCE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_service_args(p)
    p.add_argument(
        "--recipes",
        nargs="+",
        action="extend",
        metavar="SEL",
        help="recipe names, globs ('paper/seq_mnist-*') or sets: all, a prefix (paper, "
        "neuroseqbench), table:<glob> (by report table). Default on a rerun: the folder's recipes",
    )
    p.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="dotted spec field set in every submitted job, value read as JSON when it parses "
        "(training.max_epochs=3, model.hidden=[64,88,88]); repeatable",
    )
    p.add_argument(
        "--out",
        default="reproduce-results",
        help="output folder: report, curves, state file, saved checkpoints (default: %(default)s)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-follow", action="store_true", help="submit, report and exit")
    mode.add_argument(
        "--wait",
        action="store_true",
        help="wait until all jobs finish printing plain lines, no progress bars (logs, scripts)",
    )
    p.add_argument(
        "--resubmit-failed",
        action="store_true",
        help="submit a new job for a recipe whose job failed or was cancelled",
    )
    p.add_argument(
        "--continue",
        dest="cont",
        action="store_true",
        help="for each recipe whose job stopped early or now asks for more budget (e.g. a "
        "larger training.max_epochs), submit a new job with init_from its latest checkpoint; "
        "when the service that ran it is gone, upload the checkpoint saved by "
        "--save-checkpoints in --out",
    )
    p.add_argument(
        "--save-checkpoints",
        action="store_true",
        help="download each job's latest and best checkpoint into OUT/checkpoints/<recipe>/ "
        "(~1 MB each for the paper's networks, small enough to commit); --continue uses them "
        "after a service restart",
    )
    p.add_argument(
        "--poll", type=_positive_float, default=2.0, metavar="S", help="poll interval (s)"
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="stop following after S seconds (the jobs keep running; exit status 3)",
    )
    p.set_defaults(func=cmd_reproduce)


def _add_service_args(p: argparse.ArgumentParser) -> None:
    """--url and --token of a command that talks to a running service."""
    p.add_argument(
        "--url",
        type=_http_url,
        default=os.environ.get("CELIF_URL", "http://127.0.0.1:8000"),
        help="the service (default: $CELIF_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("CELIF_TOKEN"),
        help="API token (default: $CELIF_TOKEN; `celif token create --name NAME` makes one)",
    )


def _add_study(sub) -> None:
    service = argparse.ArgumentParser(add_help=False)
    _add_service_args(service)
    follow = argparse.ArgumentParser(add_help=False, parents=[service])
    follow.add_argument("--follow", action="store_true", help="a progress bar until it ends")
    follow.add_argument("--poll", type=_positive_float, default=2.0, metavar="S")

    p = sub.add_parser("study", help="studies (sweeps) on a running service")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    s = ssub.add_parser("submit", parents=[follow], help="submit a study (JSON file); prints its id")  # fmt: skip
    s.add_argument("file", help="the study: {base, search, objective, max_concurrent, ...}")
    s = ssub.add_parser("status", parents=[follow], help="status, progress and best trial")
    s.add_argument("id")
    s = ssub.add_parser("table", parents=[service], help="the trials side by side (or --csv)")
    s.add_argument("id")
    s.add_argument("--csv", action="store_true", help="print the CSV the service renders")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from celif_cli import study

    return {"submit": study.cmd_submit, "status": study.cmd_status, "table": study.cmd_table}[
        args.study_command
    ](args)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"expected http(s)://host:port, got {value!r}")
    return value.rstrip("/")


def _queue_kinds(value: str) -> tuple[str, ...]:
    from jobstore.queue import QUEUES

    kinds = [k.strip() for k in value.split(",") if k.strip()]
    if kinds == ["all"]:
        return ("all",)
    unknown = [k for k in kinds if k not in QUEUES]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown queue {', '.join(map(repr, unknown or [value]))}; expected a "
            f"comma-separated list of {', '.join(QUEUES)}, or all"
        )
    return tuple(dict.fromkeys(kinds))


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return x


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "loglevel", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
