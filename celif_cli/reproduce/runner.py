"""`celif reproduce`: submit recipes to a running service, follow them, write the report.

The flow (each step restartable; the state file is saved after every submission):
  1. read the catalog (GET /api/v1/recipes) and pick the recipes (plan.select_recipes);
  2. find each recipe's jobs: the state file's ids and the user's jobs named `reproduce:R`;
  3. decide per recipe (plan.decide): follow, only report, submit, continue from a checkpoint
     (`init_from`), or upload a saved checkpoint first when the old service is gone;
  4. validate every body to submit (dry run) before submitting any, then submit;
  5. follow until all finish (progress bars on a terminal, plain lines otherwise);
  6. optionally download checkpoints; write the report (markdown + PNGs) into the folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from celif_cli.reproduce import plan, report
from celif_cli.reproduce.api import ApiError, Client, file_sha256

CHECKPOINTS_DIR = "checkpoints"
RECONNECT_S = 300.0  # how long following waits out an unreachable service
SNAPSHOT_KEYS = (
    "id", "name", "status", "progress", "latest_metrics", "best_metrics", "spec", "error",
    "created_at", "started_at", "finished_at",
)  # fmt: skip


@dataclass
class Options:
    url: str
    token: str
    out: Path
    recipes: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    follow: bool = True
    quiet_wait: bool = False  # --wait: wait to the end with plain lines, no progress bars
    resubmit_failed: bool = False
    cont: bool = False
    save_checkpoints: bool = False
    poll_s: float = 2.0
    timeout_s: float | None = None


@dataclass
class Entry:
    """One recipe in this run."""

    recipe: dict[str, Any]
    job: dict[str, Any] | None = None
    note: str = ""
    overrides: list[str] = field(default_factory=list)  # --override items this recipe runs with

    @property
    def name(self) -> str:
        return self.recipe["name"]


def saved_checkpoint_path(out: Path, recipe: str, which: str = "latest") -> Path:
    return Path(out) / CHECKPOINTS_DIR / plan.slug(recipe) / f"{which}.safetensors"


def _say(stream: TextIO, text: str) -> None:
    print(f"[reproduce] {text}", file=stream, flush=True)


def _newest(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(jobs, key=lambda j: (j.get("created_at") or "", j["id"])) if jobs else None


def run(opts: Options, stream: TextIO = sys.stderr) -> int:
    """The whole command; returns the exit status (0 all succeeded or left running on purpose,
    1 a job failed or was cancelled, 3 stopped following at --timeout with jobs unfinished).
    Raises plan.UsageError (exit 2) and ApiError (exit 1) for the CLI to print."""
    plan.overrides_body(opts.overrides)  # a bad --override is a usage error before anything
    out = Path(opts.out)
    state = plan.load_state(out)
    with Client(opts.url, opts.token) as client:
        client.check()
        catalog = client.recipes()
        by_name = {r["name"]: r for r in catalog}
        selectors = opts.recipes or []
        if selectors:
            names = plan.select_recipes(selectors, catalog)
        elif state.recipes:
            names = [n for n in state.recipes if n in by_name]  # a rerun: what the folder holds
        else:
            raise plan.UsageError(
                "--recipes",
                f"name the recipes to run (names, globs or sets); known: {', '.join(by_name) or '(none)'}",
            )
        named: dict[str, list[dict[str, Any]]] = {}
        for job in client.jobs():
            r = plan.recipe_of_job_name(job.get("name"))
            if r is not None:
                named.setdefault(r, []).append(job)

        entries = [Entry(by_name[n]) for n in names]
        todo: list[tuple[Entry, plan.Action, dict[str, Any]]] = []
        for e in entries:
            e.overrides = _overrides_of(state, opts, e.name)
            overrides = plan.overrides_body(e.overrides)
            action = _decide(client, state, opts, out, e, named.get(e.name, []), overrides)
            e.job = action.job
            if action.reason and action.kind in ("report", "follow"):
                e.note = action.reason
            if action.kind in ("submit", "continue", "upload"):
                todo.append((e, action, _body(client, state, out, e, action, overrides)))
            elif action.job is not None:
                _remember(state, opts, e, action.job, submitted=False)
        state.url = client.url
        plan.save_state(out, state)

        # Every body is checked before the first submission: a bad --override stops the run
        # with nothing half-submitted.
        for e, _action, body in todo:
            try:
                client.validate(body)
            except ApiError as exc:
                if exc.status == 422:
                    flag = "--override" if opts.overrides else "--recipes"
                    raise plan.UsageError(flag, f"the service rejected the spec of {e.name}: {exc}") from None  # fmt: skip
                raise
        for e, action, body in todo:
            _say(stream, f"{e.name}: {action.reason}; submitting")
            key = _idempotency_key(e.name, body, len(named.get(e.name, [])))
            e.job = client.submit(body, idempotency_key=key)
            _remember(state, opts, e, e.job, submitted=True)
            plan.save_state(out, state)
            _say(stream, f"{e.name}: job {e.job['id']} ({opts.url.rstrip('/')}/#/jobs/{e.job['id']})")  # fmt: skip
        for e in entries:
            if e.job is not None and not any(t[0] is e for t in todo):
                _say(stream, f"{e.name}: job {e.job['id']} {e.job['status']}" + (f" ({e.note})" if e.note else ""))  # fmt: skip

        rc = 0
        if opts.follow:
            followed = [e for e in entries if e.job and e.job["status"] not in plan.FINISHED]
            rc = follow(client, entries, opts, stream)
            for e in followed:
                if e.job["status"] in ("failed", "cancelled"):
                    _say(stream, f"{e.name}: job {e.job['id']} {e.job['status']}; not resubmitted (--resubmit-failed or --continue)")  # fmt: skip
        if opts.save_checkpoints:
            for e in entries:
                if e.job is not None:
                    _save_checkpoints(client, state, out, e, stream)
            plan.save_state(out, state)
        path = write_report(client, state, out, catalog, {e.name: e for e in entries})
        plan.save_state(out, state)
        _say(stream, f"report: {path}")
        if rc == 0 and any(e.job and e.job["status"] in ("failed", "cancelled") for e in entries):
            rc = 1
        return rc


# ----------------------------------------------------------------------------- decisions
def _decide(client, state, opts, out, e: Entry, named_jobs, overrides) -> plan.Action:
    rs = state.recipes.get(e.name)
    candidates = list(named_jobs)
    known = {j["id"] for j in candidates}
    unknown_ids: list[str] = []
    for jid in rs.job_ids if rs else []:
        if jid in known:
            continue
        job = client.job(jid)
        if job is None:
            unknown_ids.append(jid)
        else:
            candidates.append(job)
            known.add(jid)
    current = _newest(candidates)
    wanted = plan.deep_merge(e.recipe.get("spec") or {}, overrides)
    has_ckpt = bool(
        opts.cont
        and current is not None
        and current["status"] in ("failed", "cancelled")
        and client.checkpoints(current["id"])
    )
    gone = bool(rs and unknown_ids and not (known & set(rs.job_ids)))
    action = plan.decide(
        current,
        known_elsewhere=gone,
        last_seen=rs.jobs[-1].get("snapshot") if gone else None,
        wanted_spec=wanted,
        has_checkpoint=has_ckpt,
        saved_checkpoint=saved_checkpoint_path(out, e.name).is_file(),
        resubmit_failed=opts.resubmit_failed,
        cont=opts.cont,
    )
    differs = plan.override_mismatches(current.get("spec") or {}, overrides) if current else []
    if differs and action.kind in ("follow", "report"):
        more = not opts.cont and plan.needs_more_budget(current.get("spec") or {}, wanted)
        note = f"existing job: {', '.join(differs)}" + (" (--continue trains on)" if more else "")
        return plan.Action(action.kind, action.job, "; ".join(filter(None, [action.reason, note])))
    return action


def _body(client, state, out, e: Entry, action: plan.Action, overrides) -> dict[str, Any]:
    init_from = None
    if action.kind == "continue":
        init_from = {"job": action.job["id"], "checkpoint": "latest"}
    elif action.kind == "upload":
        init_from = {"upload": _upload(client, state, out, e.name)}
    return plan.submit_body(e.name, overrides, init_from)


def _upload(client, state, out, recipe: str) -> str:
    """The uploaded id of the saved latest checkpoint (uploaded once per service and digest)."""
    path = saved_checkpoint_path(out, recipe)
    digest = file_sha256(path)
    rs = state.recipe(recipe)
    prior = rs.uploads.get(digest)
    if prior and prior.get("url") == client.url:
        return prior["id"]
    up = client.upload_checkpoint(path)
    rs.uploads[digest] = {"id": up["id"], "url": client.url, "step": up.get("step")}
    return up["id"]


def _idempotency_key(recipe: str, body: dict[str, Any], nth: int) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return f"reproduce:{recipe}:{nth}:{digest}"[-200:]


def _overrides_of(state, opts: Options, recipe: str) -> list[str]:
    """The --override list as given; on a call without any, each recipe keeps the overrides it
    was submitted with (the state file's), so a plain rerun never trains it on another spec."""
    if opts.overrides:
        return list(opts.overrides)
    rs = state.recipes.get(recipe)
    return list(rs.overrides) if rs else []


def _remember(state, opts, e: Entry, job: dict[str, Any], *, submitted: bool) -> None:
    rs = state.recipe(e.name)
    if job["id"] not in rs.job_ids:
        rs.jobs.append({"id": job["id"], "url": opts.url.rstrip("/")})
    if submitted or not rs.command:
        cont = bool((job.get("spec") or {}).get("init_from"))
        rs.overrides = list(e.overrides)
        rs.command = plan.command_line(e.name, e.overrides, str(opts.out), cont=cont)
    _snapshot(state, e.name, job)


def _snapshot(state, recipe: str, job: dict[str, Any]) -> None:
    """Keep the job's last known figures in the state file: the report still has them when
    the service that ran it is gone."""
    for j in state.recipe(recipe).jobs:
        if j["id"] == job["id"]:
            j["snapshot"] = {k: job.get(k) for k in SNAPSHOT_KEYS}


# ----------------------------------------------------------------------------- following
def follow(client: Client, entries: list[Entry], opts: Options, stream: TextIO) -> int:
    """Poll the jobs until all are finished (or --timeout); 3 when stopped with jobs unfinished."""
    active = [e for e in entries if e.job is not None and e.job["status"] not in plan.FINISHED]
    if not active:
        return 0
    bars = None if opts.quiet_wait or not stream.isatty() else _Bars(active, stream)
    last: dict[str, tuple] = {}
    deadline = None if opts.timeout_s is None else time.monotonic() + opts.timeout_s
    unreachable_since = None
    try:
        while True:
            try:
                for e in active:
                    if e.job["status"] in plan.FINISHED:
                        continue
                    job = client.job(e.job["id"])
                    if job is None:
                        raise ApiError(f"job {e.job['id']} of {e.name} disappeared from the service", 404)  # fmt: skip
                    e.job = job
                    if bars:
                        bars.update(e)
                    else:
                        _line(e, last, stream)
                unreachable_since = None
            except ApiError as exc:
                # A service restart during an hours-long run is not the end of following it.
                if exc.status is not None and exc.status < 500:
                    raise
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    _say(stream, f"{exc}; retrying for up to {RECONNECT_S:.0f} s")
                elif time.monotonic() - unreachable_since > RECONNECT_S:
                    raise
            if all(e.job["status"] in plan.FINISHED for e in active):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                _say(stream, f"--timeout {opts.timeout_s:g}s reached; the jobs keep running (run the same command again to follow them)")  # fmt: skip
                return 3
            time.sleep(opts.poll_s)
    except KeyboardInterrupt:
        _say(stream, "interrupted; the jobs keep running (run the same command again to follow them)")  # fmt: skip
        return 3
    finally:
        if bars:
            bars.close()


def _progress_text(e: Entry) -> str:
    fig = report.our_figure(e.job, report.reference_metric(e.recipe))
    value = report.fmt_value(fig.metric, fig.value)
    if e.job["status"] == "queued" and e.job.get("waiting_for"):
        return f"queued, waiting for {e.job['waiting_for']}"
    return f"{e.job['status']}" + (f", {fig.metric} {value}" if fig.value is not None else "")


def _line(e: Entry, last: dict[str, tuple], stream: TextIO) -> None:
    """Non-terminal output: one line per status change or per 10 % of progress."""
    p = e.job.get("progress") or {}
    key = (e.job["status"], int(10 * float(p.get("fraction") or 0)), e.job.get("queue_has_worker"))
    if last.get(e.name) == key:
        return
    last[e.name] = key
    _say(stream, f"{e.name}: step {p.get('step', 0)}/{p.get('max_steps', '?')} {_progress_text(e)}")  # fmt: skip


class _Bars:
    """One tqdm bar per job (tqdm is already a dependency of the library)."""

    def __init__(self, entries: list[Entry], stream: TextIO):
        from tqdm import tqdm

        width = max(len(e.name) for e in entries)
        # The terminal's size, with a fallback: a terminal that reports 0 x 0 (a bare pty)
        # would make tqdm draw nothing.
        size = shutil.get_terminal_size((100, 24))
        self.bars = {
            e.name: tqdm(
                total=int((e.job.get("progress") or {}).get("max_steps") or 1),
                desc=e.name.ljust(width),
                position=i,
                file=stream,
                unit="step",
                ncols=size.columns,
                nrows=size.lines,
                leave=True,
            )
            for i, e in enumerate(entries)
        }

    def update(self, e: Entry) -> None:
        bar = self.bars[e.name]
        p = e.job.get("progress") or {}
        bar.total = int(p.get("max_steps") or bar.total)
        bar.n = int(p.get("step") or 0)
        bar.set_postfix_str(_progress_text(e), refresh=False)
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# ----------------------------------------------------------------------------- checkpoints
def _save_checkpoints(client: Client, state, out: Path, e: Entry, stream: TextIO) -> None:
    rs = state.recipe(e.name)
    # A job continued from another job's checkpoint may not have beaten the best of the run it
    # continues: then it has no checkpoint of its own flagged best, and the service's "best"
    # would be its latest. The saved best (of the earlier job) is kept instead.
    has_best = any(c.get("is_best") for c in client.checkpoints(e.job["id"]))
    for which in ("latest", "best") if has_best else ("latest",):
        dest = saved_checkpoint_path(out, e.name, which)
        info = client.download_checkpoint(e.job["id"], which, dest)
        if info is None:
            _say(stream, f"{e.name}: job {e.job['id']} has no {which} checkpoint yet")
            continue
        rs.checkpoints[which] = {**info, "path": dest.relative_to(out).as_posix()}
        _say(stream, f"{e.name}: {which} checkpoint (step {info['step']}, {info['size_bytes'] / 1e6:.1f} MB) -> {dest}")  # fmt: skip
    if not has_best:
        _say(stream, f"{e.name}: job {e.job['id']} has no checkpoint better than the run it continues; the saved best is kept")  # fmt: skip


# ----------------------------------------------------------------------------- report
def write_report(client: Client, state, out: Path, catalog, entries: dict[str, Entry]) -> Path:
    """The report covers every recipe the folder's state file holds, not only this run's."""
    order = [r["name"] for r in catalog]
    names = sorted(state.recipes, key=lambda n: (order.index(n) if n in order else len(order), n))
    by_name = {r["name"]: r for r in catalog}
    curves = out / report.CURVES_DIR
    curves.mkdir(parents=True, exist_ok=True)
    rows, job_plots, per_table = [], {}, {}
    for name in names:
        rs = state.recipes[name]
        recipe = by_name.get(name) or {"name": name, "table": report.NO_TABLE}
        entry = entries.get(name)
        job, note, points = (entry.job, entry.note, None) if entry else (None, "", None)
        if job is None and rs.jobs:
            job = client.job(rs.jobs[-1]["id"])
        if job is None and rs.jobs and rs.jobs[-1].get("snapshot"):
            job, note = rs.jobs[-1]["snapshot"], "last seen on " + rs.jobs[-1].get("url", "?")
        elif job is not None:
            _snapshot(state, name, job)
            points = client.metrics(job["id"])
            rel = report.job_plot_path(name)
            (out / rel).write_bytes(client.curves_png(job["id"]))
            job_plots[name] = rel
            fig = report.our_figure(job, report.reference_metric(recipe))
            per_table.setdefault(recipe.get("table") or report.NO_TABLE, []).append(
                (name, report.metric_base(fig.metric), points)
            )
        if name not in job_plots and (out / report.job_plot_path(name)).is_file():
            job_plots[name] = report.job_plot_path(name)  # drawn by an earlier call
        rows.append(report.build_row(recipe, job, points, rs.command, note=note))
    table_plots = {}
    for table, jobs in per_table.items():
        rel = report.table_plot_path(table)
        (out / rel).write_bytes(report.plot_table(table, jobs))
        table_plots[table] = rel
    text = report.render_markdown(
        rows,
        url=client.url,
        generated=datetime.now(UTC),
        table_plots=table_plots,
        job_plots=job_plots,
    )
    path = out / report.REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
