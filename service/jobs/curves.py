"""Learning curves rendered server-side with matplotlib's Agg backend (no pyplot: the Figure API
is safe to use from the threadpool that runs sync endpoints). Imported lazily by the route."""

from __future__ import annotations

import io
import math
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

from service.db.models import JobEvent

MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


def render_curves(title: str, events: list[JobEvent], fmt: str) -> bytes:
    """One panel per metric name (loss, accuracy, ...), one line per split (train/val/test)."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e.value is None or not math.isfinite(e.value) or e.step is None:
            continue
        series[e.name or "value"][e.split or "train"].append((e.step, e.value))
    names = sorted(series, key=lambda n: (n != "loss", n))
    panels = max(len(names), 1)
    fig = Figure(figsize=(6.4, 2.6 * panels), dpi=100, layout="constrained")
    canvas = FigureCanvasSVG(fig) if fmt == "svg" else FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    if not names:
        axes[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, name in zip(axes, names, strict=False):
        for split in sorted(series[name]):
            points = sorted(series[name][split])
            ax.plot([p[0] for p in points], [p[1] for p in points], label=split, linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        if name == "loss" and all(v > 0 for s in series[name].values() for _, v in s):
            ax.set_yscale("log")
    axes[-1].set_xlabel("step")
    fig.suptitle(title, fontsize="medium")
    buf = io.BytesIO()
    if fmt == "svg":
        canvas.print_svg(buf)
    else:
        canvas.print_png(buf)
    return buf.getvalue()
