"""The pure part of `celif reproduce`: which recipes, which body, what to do with each.

Nothing here talks to the network or the disk except the state file's load/save, so every rule
(selection, overrides, "submit, follow, continue or only report") is unit-tested on plain dicts.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOB_NAME_PREFIX = "reproduce:"  # the contract: recipe R's job is named "reproduce:R"
FINISHED = ("succeeded", "failed", "cancelled", "stopped_early")
# Top-level body sections an --override may touch (the contract's submit-by-recipe body);
# `name` and `init_from` are set by reproduce itself.
OVERRIDE_SECTIONS = ("task", "model", "training")
# The two budget fields of the training section: exactly one is set in a spec.
BUDGET_FIELDS = ("max_steps", "max_epochs")
STATE_FILE = "reproduce-state.json"
STATE_VERSION = 1


class UsageError(ValueError):
    """A bad command-line value; `flag` names the option it came from (exit status 2)."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag


def job_name(recipe: str) -> str:
    return f"{JOB_NAME_PREFIX}{recipe}"


def recipe_of_job_name(name: str | None) -> str | None:
    if name and name.startswith(JOB_NAME_PREFIX):
        return name[len(JOB_NAME_PREFIX) :]
    return None


def slug(text: str) -> str:
    """A file-name-safe form of a recipe or table name (`paper/seq_mnist-83k` -> `paper_seq_mnist-83k`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# ----------------------------------------------------------------------------- selection
def select_recipes(selectors: list[str], catalog: list[dict[str, Any]]) -> list[str]:
    """Recipe names chosen by `selectors`, in catalog order, each once.

    A selector is an exact name (`demo/adding-tiny`), a glob (`paper/seq_mnist-*`), or a named
    set: `all`, a name prefix (`paper` = `paper/*`), or `table:<glob>` (the recipes whose report
    table matches, case-insensitive, e.g. `table:Seq-MNIST*`). One that matches nothing is an
    error listing what exists: a typo must not silently shrink a reproduction.
    """
    names = [r["name"] for r in catalog]
    chosen: set[str] = set()
    for sel in selectors:
        sel = sel.strip()
        if not sel:
            raise UsageError("--recipes", "empty recipe selector")
        if sel == "all":
            hits = names
        elif sel.startswith("table:"):
            pattern = sel[len("table:") :].lower()
            hits = [r["name"] for r in catalog if fnmatch.fnmatchcase(str(r.get("table") or "").lower(), pattern)]  # fmt: skip
        elif sel in names:
            hits = [sel]
        elif any(c in sel for c in "*?["):
            hits = fnmatch.filter(names, sel)
        else:
            hits = [n for n in names if n.startswith(sel.rstrip("/") + "/")]
        if not hits:
            tables = sorted({str(r.get("table")) for r in catalog if r.get("table")})
            raise UsageError(
                "--recipes",
                f"{sel!r} matches no recipe; known recipes: {', '.join(names) or '(none)'}"
                + (f"; tables: {'; '.join(tables)}" if tables else ""),
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


# ----------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.max_epochs=3` -> (["training", "max_epochs"], 3).

    The value is read as JSON when it parses (numbers, true/false/null, lists, objects), else
    kept as a string: `model.hidden=[64,88,88]`, `model.neuron_params.ce_timing=previous`.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError("--override", f"expected key=value with a dotted key, got {text!r}")
    path = key.split(".")
    if any(not part for part in path):
        raise UsageError("--override", f"empty part in the dotted key {key!r}")
    if path[0] not in OVERRIDE_SECTIONS:
        raise UsageError(
            "--override",
            f"{key!r} must start with one of {', '.join(OVERRIDE_SECTIONS)} (e.g. training.max_epochs=3)",
        )
    if len(path) < 2:
        raise UsageError("--override", f"{key!r} names a whole section; name a field in it")
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def overrides_body(overrides: list[str]) -> dict[str, Any]:
    """All `--override` values as one nested dict (a later one wins over an earlier one).

    Setting one budget field clears the other (`training.max_epochs=3` over a recipe that uses
    `max_steps` sends `max_steps: null`): a spec has exactly one of them.
    """
    body: dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = body
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    training = body.get("training")
    if isinstance(training, dict):
        set_ = [f for f in BUDGET_FIELDS if training.get(f) is not None]
        if len(set_) == 2:
            raise UsageError(
                "--override", "set training.max_steps or training.max_epochs, not both"
            )
        if set_:
            other = BUDGET_FIELDS[1 - BUDGET_FIELDS.index(set_[0])]
            training.setdefault(other, None)
    return body


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """The contract's merge: dicts merged recursively, scalars and lists replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def submit_body(
    recipe: str, overrides: dict[str, Any], init_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The POST /api/v1/jobs body for one recipe."""
    body: dict[str, Any] = {"recipe": recipe, "name": job_name(recipe), **copy.deepcopy(overrides)}
    if init_from is not None:
        body["init_from"] = init_from
    return body


def command_line(recipe: str, overrides: list[str], out: str, *, cont: bool = False) -> str:
    """The command that (re)produces one report row (no token: it comes from CELIF_TOKEN)."""
    parts = ["celif", "reproduce", "--recipes", _quote(recipe)]
    for o in overrides:
        parts += ["--override", _quote(o)]
    if cont:
        parts.append("--continue")
    parts += ["--out", _quote(out)]
    return " ".join(parts)


def _quote(text: str) -> str:
    return (
        text
        if re.fullmatch(r"[A-Za-z0-9_./:=,+-]+", text)
        else "'" + text.replace("'", "'\\''") + "'"
    )


def override_mismatches(job_spec: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """The overridden fields whose value in an existing job's spec differs ("training.max_steps
    is 30, asked 40"): a rerun with other overrides finds the old job by name and must say so
    instead of reporting it as if it were the asked-for run."""
    out: list[str] = []

    def walk(spec: Any, over: dict[str, Any], prefix: str) -> None:
        for key, want in over.items():
            have = spec.get(key) if isinstance(spec, dict) else None
            if isinstance(want, dict) and isinstance(have, dict):
                walk(have, want, f"{prefix}{key}.")
            elif have != want:
                out.append(f"{prefix}{key} is {json.dumps(have)}, asked {json.dumps(want)}")

    walk(job_spec, overrides, "")
    return out


# ----------------------------------------------------------------------------- budget
def budget(training: dict[str, Any]) -> tuple[str, float] | None:
    """("max_epochs", 3) or ("max_steps", 1200) of a training section, or None."""
    for f in ("max_epochs", "max_steps"):
        if training.get(f) is not None:
            return f, float(training[f])
    return None


def needs_more_budget(job_spec: dict[str, Any], wanted_spec: dict[str, Any]) -> bool:
    """Does the wanted spec (recipe + overrides) ask for more training than the job had?

    Same unit: more epochs or steps. Different units (the job ran by steps, the recipe now says
    epochs): not comparable without the dataset size, so a change of unit counts as more budget.
    """
    have = budget(job_spec.get("training") or {})
    want = budget(wanted_spec.get("training") or {})
    if want is None:
        return False
    if have is None or have[0] != want[0]:
        return True
    return want[1] > have[1]


# ----------------------------------------------------------------------------- state file
@dataclass
class RecipeState:
    """What one output folder remembers of a recipe: its jobs (oldest first) and saved files."""

    jobs: list[dict[str, Any]] = field(default_factory=list)  # {"id", "url", "init_from"?}
    overrides: list[str] = field(default_factory=list)
    command: str = ""
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # latest/best -> file info
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 -> {"id", "url"}

    @property
    def job_ids(self) -> list[str]:
        return [j["id"] for j in self.jobs]


@dataclass
class State:
    url: str | None = None
    recipes: dict[str, RecipeState] = field(default_factory=dict)

    def recipe(self, name: str) -> RecipeState:
        return self.recipes.setdefault(name, RecipeState())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "url": self.url,
            "recipes": {
                name: {
                    "jobs": r.jobs,
                    "overrides": r.overrides,
                    "command": r.command,
                    "checkpoints": r.checkpoints,
                    "uploads": r.uploads,
                }
                for name, r in sorted(self.recipes.items())
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"not a version-{STATE_VERSION} reproduce state file")
        recipes = {
            name: RecipeState(
                jobs=list(r.get("jobs") or []),
                overrides=list(r.get("overrides") or []),
                command=str(r.get("command") or ""),
                checkpoints=dict(r.get("checkpoints") or {}),
                uploads=dict(r.get("uploads") or {}),
            )
            for name, r in (data.get("recipes") or {}).items()
        }
        return cls(url=data.get("url"), recipes=recipes)


def load_state(out_dir: Path) -> State:
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return State()
    try:
        return State.from_json(json.loads(path.read_text()))
    except ValueError as exc:
        raise UsageError(
            "--out", f"{path} is not a readable reproduce state file ({exc})"
        ) from None


def save_state(out_dir: Path, state: State) -> Path:
    """Write atomically (temp file + rename): an interrupted run never leaves half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / STATE_FILE
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".state-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(state.to_json(), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Action:
    """What to do for one recipe. kind: follow | report | submit | continue | upload."""

    kind: str
    job: dict[str, Any] | None = None  # the current job on the service, if any
    reason: str = ""


def decide(
    current: dict[str, Any] | None,
    *,
    known_elsewhere: bool,
    wanted_spec: dict[str, Any] | None,
    has_checkpoint: bool,
    saved_checkpoint: bool,
    resubmit_failed: bool,
    cont: bool,
    last_seen: dict[str, Any] | None = None,
) -> Action:
    """The rule for one recipe.

    current: the newest job named `reproduce:R` on this service (None: none there).
    known_elsewhere: the state file lists jobs for R that this service does not know (the
    service that ran them is gone). has_checkpoint: `current` has a checkpoint to continue from;
    saved_checkpoint: the output folder holds a saved checkpoint file for R. last_seen: the
    state file's snapshot of R's newest job when that service is gone.
    """
    if current is None and known_elsewhere and last_seen is not None:
        # A job that finished on a service that is gone keeps its result: reported from the
        # state file, not trained again behind the user's back.
        status = last_seen.get("status")
        gone = "finished on a service that is gone: reported from the state file"
        if status == "succeeded" and not (
            cont and wanted_spec is not None and needs_more_budget(last_seen.get("spec") or {}, wanted_spec)
        ):  # fmt: skip
            return Action("report", reason=gone)
        if status in FINISHED and status != "succeeded" and not (cont or resubmit_failed):
            return Action("report", reason=f"{status} on a service that is gone; not resubmitted (pass --resubmit-failed or --continue)")  # fmt: skip
    if current is None:
        if known_elsewhere and cont and saved_checkpoint:
            return Action("upload", reason="the previous service is gone: continuing from the saved checkpoint")  # fmt: skip
        if known_elsewhere:
            why = "no saved checkpoint in the output folder" if cont else "no --continue"
            return Action("submit", reason=f"the jobs in the state file are unknown to this service ({why}): starting afresh")  # fmt: skip
        return Action("submit", reason="no job yet")
    status = current.get("status")
    if status not in FINISHED:
        return Action("follow", current)
    if status == "succeeded":
        if cont and wanted_spec is not None and needs_more_budget(current.get("spec") or {}, wanted_spec):  # fmt: skip
            return Action("continue", current, "more budget asked for than the job had")
        return Action("report", current)
    # failed or cancelled: reported as such, never resubmitted behind the user's back
    if cont and has_checkpoint:
        return Action("continue", current, f"the job {status} before its end: continuing from its latest checkpoint")  # fmt: skip
    if resubmit_failed or cont:
        return Action("submit", current, f"the job {status}: submitting it again")
    return Action("report", current, f"{status}; not resubmitted (pass --resubmit-failed or --continue)")  # fmt: skip
