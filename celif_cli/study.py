"""`celif study submit | status | table`: studies on a running service, through its HTTP API
(the same client as `celif reproduce`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from celif_cli.reproduce.api import ApiError, Client

FINISHED = ("completed", "failed", "cancelled")


def _run(args, body) -> int:
    if not args.token:
        print("celif study: error: no API token: pass --token or set CELIF_TOKEN", file=sys.stderr)
        return 2
    try:
        with Client(args.url, args.token) as client:
            return body(client)
    except ApiError as exc:
        print(f"celif study: error: {exc}", file=sys.stderr)
        return 1


def cmd_submit(args) -> int:
    try:
        spec = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        print(f"celif study: error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2

    def submit(client: Client) -> int:
        study = client.submit_study(spec)
        print(study["id"])
        if args.follow:
            return follow(client, study["id"], args.poll)
        return 0

    return _run(args, submit)


def cmd_status(args) -> int:
    def status(client: Client) -> int:
        if args.follow:
            return follow(client, args.id, args.poll)
        print(summary(client.study(args.id)))
        return 0

    return _run(args, status)


def cmd_table(args) -> int:
    def table(client: Client) -> int:
        if args.csv:
            sys.stdout.write(client.study_csv(args.id))
        else:
            print(format_table(client.study_table(args.id)))
        return 0

    return _run(args, table)


def summary(study: dict[str, Any]) -> str:
    p = study["progress"]
    counts = ", ".join(f"{n} {s}" for s, n in p["by_status"].items())
    lines = [
        f"study {study['id']} {study.get('name') or ''}".rstrip(),
        f"status: {study['status']}  trials: {p['finished']}/{p['trials']} finished ({counts})",
    ]
    best = study.get("best_trial")
    if best:
        obj = study["objective"]
        lines.append(
            f"best: trial {best['index']} {obj['metric']}={best['objective']:.6g} "
            f"({obj['mode']}) {_overrides(best['overrides'])} job {best['job_id']}"
        )
    return "\n".join(lines)


def follow(client: Client, study_id: str, poll_s: float) -> int:
    """A progress bar over the study's trials (plain lines when not a terminal)."""
    from tqdm import tqdm

    study = client.study(study_id)
    tty = sys.stderr.isatty()
    bar = tqdm(total=study["progress"]["trials"], desc=study_id[:8], disable=not tty)
    last = None
    while True:
        p = study["progress"]
        bar.total, bar.n = p["trials"], p["finished"]
        bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in p["by_status"].items()))
        line = (study["status"], p["finished"])
        if not tty and line != last:
            print(f"{study_id}: {study['status']} {p['finished']}/{p['trials']}", file=sys.stderr)
        last = line
        if study["status"] in FINISHED:
            break
        time.sleep(poll_s)
        study = client.study(study_id)
    bar.close()
    print(summary(study))
    return 0 if study["status"] == "completed" else 1


def _overrides(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def format_table(table: dict[str, Any]) -> str:
    """The comparison as aligned text: one row per trial."""
    metric = table["objective"]["metric"]
    head = ["#", *table["fields"], "status", "step", f"final {metric}", f"best {metric}",
            "wall s", "rate", "energy nJ"]  # fmt: skip
    rows = [
        [str(r["trial"]), *(_fmt(r["overrides"].get(f)) for f in table["fields"]), r["status"],
         f"{r['step']}/{r['max_steps']}", _fmt(r["final"]), _fmt(r["best"]),
         _fmt(r["wall_time_s"]), _fmt(r["mean_firing_rate"]), _fmt(r["energy_nj"])]
        for r in table["rows"]
    ]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True))
        for line in [head, *rows]
    )
