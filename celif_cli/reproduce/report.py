"""The report of `celif reproduce`: markdown tables (one per recipe `table`) and curve plots.

Pure functions of the recipe catalog entries, job objects and metric points as the API returns
them (docs/api.md), so the rendering is tested without a service.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celif_cli.reproduce.plan import slug

REPORT_FILE = "reproduce.md"
CURVES_DIR = "curves"
NO_TABLE = "Other recipes"


@dataclass(frozen=True)
class Figure:
    metric: str  # the job's own metric name, e.g. "test_accuracy" or "val_accuracy"
    value: float | None
    note: str = ""  # e.g. "best val, step 1200"


def metric_base(metric: str) -> str:
    for prefix in ("test_", "val_", "train_"):
        if metric.startswith(prefix):
            return metric[len(prefix) :]
    return metric


def reference_metric(recipe: dict[str, Any]) -> str | None:
    ref = recipe.get("reference") or {}
    for source in ("paper", "neuroseqbench"):
        if ref.get(source) and ref[source].get("metric"):
            return str(ref[source]["metric"])
    return None


def _loss_last(key: str) -> tuple[bool, str]:
    return key.endswith("_loss"), key


def our_figure(job: dict[str, Any], metric: str | None) -> Figure:
    """The job's final test figure for `metric`, else its best validation figure (named).

    `metric` is the recipe reference's metric name ("test_accuracy"); without one, the job's
    test metric (the task's own before the loss), else its best validation one."""
    latest = job.get("latest_metrics") or {}
    best = job.get("best_metrics") or {}
    if metric is None:  # the task's own metric (accuracy, mse) before the loss
        tests = sorted((k for k in latest if k.startswith("test_")), key=_loss_last)
        vals = sorted((k for k in best if k.startswith("val_")), key=_loss_last)
        metric = tests[0] if tests else (vals[0] if vals else None)
        if metric is None:
            return Figure("-", None, "no metrics yet")
    base = metric_base(metric)
    test_key = f"test_{base}"
    if latest.get(test_key) is not None:
        return Figure(test_key, float(latest[test_key]), "final model, test set")
    val_key = f"val_{base}"
    if best.get(val_key) is not None:
        step = best.get("step")
        return Figure(val_key, float(best[val_key]), f"best val, step {step}" if step is not None else "best val")  # fmt: skip
    if latest.get(val_key) is not None:
        return Figure(val_key, float(latest[val_key]), "latest val")
    return Figure(test_key, None, "no metrics yet")


def _is_accuracy(metric: str) -> bool:
    return "accuracy" in metric


def normalise(metric: str, value: float | None) -> float | None:
    """Accuracies in percent whichever way they are stored (0.9819 and 98.19 both read 98.19)."""
    if value is None or not math.isfinite(value):
        return None
    if _is_accuracy(metric) and abs(value) <= 1.0:
        return value * 100.0
    return value


def fmt_value(metric: str, value: float | None) -> str:
    v = normalise(metric, value)
    if v is None:
        return "-"
    return f"{v:.2f} %" if _is_accuracy(metric) else f"{v:.4g}"


def fmt_diff(metric: str, ours: float | None, ref: float | None) -> str:
    a, b = normalise(metric, ours), normalise(metric, ref)
    if a is None or b is None:
        return "-"
    d = a - b
    return f"{d:+.2f} pp" if _is_accuracy(metric) else f"{d:+.4g}"


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def wall_seconds(job: dict[str, Any], now: datetime | None = None) -> float | None:
    start = _parse_time(job.get("started_at"))
    if start is None:
        return None
    end = _parse_time(job.get("finished_at"))
    if end is None:
        end = now or datetime.now(UTC)
    return max((end - start).total_seconds(), 0.0)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_budget(job: dict[str, Any], points: list[dict[str, Any]] | None = None) -> str:
    """ "1200/1200 steps (3.0 epochs)": steps run of the budget, and epochs where known."""
    progress = job.get("progress") or {}
    step, max_steps = int(progress.get("step") or 0), int(progress.get("max_steps") or 0)
    text = f"{step}/{max_steps} steps"
    if progress.get("max_epochs") and progress.get("epoch") is not None:  # the service's own
        return f"{text} ({float(progress['epoch']):.1f}/{progress['max_epochs']} epochs)"
    training = (job.get("spec") or {}).get("training") or {}
    if training.get("max_epochs") and max_steps:
        return f"{text} ({step * float(training['max_epochs']) / max_steps:.1f}/{training['max_epochs']} epochs)"  # fmt: skip
    epochs = [p["epoch"] for p in points or [] if p.get("epoch")]
    if epochs:
        return f"{text} ({max(epochs):g} epochs)"
    return text


def fmt_status(job: dict[str, Any], note: str = "") -> str:
    status = str(job.get("status") or "?")
    if status in ("queued", "running"):
        frac = (job.get("progress") or {}).get("fraction")
        if status == "running" and frac is not None:
            status = f"running {100 * float(frac):.0f} %"
    if job.get("error"):
        status += f": {_one_line(str(job['error']), 80)}"
    if status == "queued" and job.get("waiting_for"):
        status += f", waiting for {job['waiting_for']}"
    init = (job.get("spec") or {}).get("init_from")
    if init:
        if init.get("job"):
            status += f" (continued from job {str(init['job'])[:8]})"
        else:
            status += f" (continued from uploaded checkpoint {str(init.get('upload'))[:8]})"
    if note:
        status += f" [{note}]"
    return status


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Row:
    recipe: str
    table: str
    job_id: str | None
    metric: str
    ours: str
    ours_note: str
    paper: str
    neuroseqbench: str
    diff_paper: str
    diff_neuroseqbench: str
    status: str
    budget: str
    wall: str
    command: str


def build_row(
    recipe: dict[str, Any],
    job: dict[str, Any] | None,
    points: list[dict[str, Any]] | None,
    command: str,
    *,
    note: str = "",
    now: datetime | None = None,
) -> Row:
    ref = recipe.get("reference") or {}
    paper, nsb = ref.get("paper") or {}, ref.get("neuroseqbench") or {}
    table = recipe.get("table") or NO_TABLE
    if job is None:
        metric = reference_metric(recipe) or "-"
        return Row(
            recipe["name"], table, None, metric, "-", "", fmt_value(metric, paper.get("value")),
            fmt_value(metric, nsb.get("value")), "-", "-", note or "not submitted", "-", "-", command,
        )  # fmt: skip
    fig = our_figure(job, reference_metric(recipe))
    return Row(
        recipe=recipe["name"],
        table=table,
        job_id=job.get("id"),
        metric=fig.metric,
        ours=fmt_value(fig.metric, fig.value),
        ours_note=fig.note,
        paper=_ref_cell(fig.metric, paper),
        neuroseqbench=_ref_cell(fig.metric, nsb),
        diff_paper=fmt_diff(fig.metric, fig.value, paper.get("value")),
        diff_neuroseqbench=fmt_diff(fig.metric, fig.value, nsb.get("value")),
        status=fmt_status(job, note),
        budget=fmt_budget(job, points),
        wall=fmt_duration(wall_seconds(job, now)),
        command=command,
    )


def _ref_cell(metric: str, ref: dict[str, Any]) -> str:
    if not ref or ref.get("value") is None:
        return "-"
    cell = fmt_value(str(ref.get("metric") or metric), ref["value"])
    if ref.get("metric") and metric_base(str(ref["metric"])) != metric_base(metric):
        cell += f" ({ref['metric']})"  # a different metric than ours: say so
    return cell


HEADER = (
    "| recipe | metric | ours | paper | neuroseqbench | ours − paper | ours − neuroseqbench "
    "| status | steps / epochs | wall time | command |"
)


def render_markdown(
    rows: list[Row],
    *,
    url: str,
    generated: datetime | None = None,
    table_plots: dict[str, str] | None = None,
    job_plots: dict[str, str] | None = None,
) -> str:
    """One section per table (first-seen order), one row per recipe, then the curve images.

    table_plots: table -> relative PNG path; job_plots: recipe -> relative PNG path."""
    generated = generated or datetime.now(UTC)
    table_plots, job_plots = table_plots or {}, job_plots or {}
    out = [
        "# Reproduction report",
        "",
        f"Written by `celif reproduce` at {generated.strftime('%Y-%m-%d %H:%M UTC')} from the "
        f'service at {url}. "ours" is the job\'s final model on the test set where the job '
        "finished, else its best validation figure (named in the metric column). Accuracies in "
        "percent, differences in percentage points (pp); for MSE and loss lower is better. "
        "Reference figures come from each recipe's `reference` (GET /api/v1/recipes).",
        "",
    ]
    tables: dict[str, list[Row]] = {}
    for row in rows:
        tables.setdefault(row.table, []).append(row)
    for table, trs in tables.items():
        out += [f"## {table}", "", HEADER, "| " + " | ".join(["---"] * 11) + " |"]
        for r in trs:
            ours = f"{r.ours} ({r.ours_note})" if r.ours_note and r.ours != "-" else r.ours
            cells = [
                f"`{r.recipe}`", r.metric, ours, r.paper, r.neuroseqbench, r.diff_paper,
                r.diff_neuroseqbench, r.status, r.budget, r.wall, f"`{r.command}`",
            ]  # fmt: skip
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        out.append("")
        if table in table_plots:
            out += [f"![{table}: validation curves]({table_plots[table]})", ""]
        for r in trs:  # which job each row is, and its own curves
            item = f"- `{r.recipe}`: " + (f"job `{r.job_id}`" if r.job_id else "no job")
            if r.recipe in job_plots:
                item += f", [curves]({job_plots[r.recipe]})"
            out.append(item)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- plots
def series(points: list[dict[str, Any]], split: str, name: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in points:
        if p.get("split") == split and p.get("name") == name and p.get("value") is not None:
            xs.append(int(p.get("step") or 0))
            ys.append(float(p["value"]))
    return xs, ys


def smooth(ys: list[float], points: int = 200) -> list[float]:
    """Trailing mean over len/points values: a loss logged every step of a long run reads as a
    band otherwise. Short series are returned as they are."""
    window = max(1, len(ys) // points)
    if window == 1:
        return list(ys)
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_table(title: str, jobs: list[tuple[str, str, list[dict[str, Any]]]]) -> bytes:
    """Overlaid curves of one table: validation `metric` and training loss by step, one line
    per recipe. jobs: (recipe, metric base name, points)."""
    # Figure + Agg canvas, no pyplot (as service/jobs/curves.py): no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(11, 4.2), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax_val, ax_loss = fig.subplots(1, 2)
    for recipe, base, points in jobs:
        xs, ys = series(points, "val", base)
        if xs:
            scale = 100.0 if _is_accuracy(base) and max(abs(y) for y in ys) <= 1.0 else 1.0
            ax_val.plot(xs, [y * scale for y in ys], marker=".", label=recipe)
        xs, ys = series(points, "train", "loss")
        if xs:
            ax_loss.plot(xs, smooth(ys), linewidth=0.8, label=recipe)
    bases = sorted({b for _, b, _ in jobs})
    ax_val.set_title("validation " + "/".join(bases) + (" (%)" if any(map(_is_accuracy, bases)) else ""))  # fmt: skip
    ax_loss.set_title("training loss (running mean)")
    for ax in (ax_val, ax_loss):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes)
    if ax_loss.lines and all(min(line.get_ydata()) > 0 for line in ax_loss.lines):
        ax_loss.set_yscale("log")
    fig.suptitle(title)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def table_plot_path(table: str) -> str:
    return f"{CURVES_DIR}/table-{slug(table)}.png"


def job_plot_path(recipe: str) -> str:
    return f"{CURVES_DIR}/{slug(recipe)}.png"
