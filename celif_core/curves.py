"""Learning curves as an image (matplotlib's Agg/SVG canvases; no pyplot, so it is safe in the
API's threadpool). Used by the API's `/curves.png` and by `celif train`."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def render_curves(title: str, points: Iterable[Mapping[str, Any]], fmt: str = "png") -> bytes:
    """One panel per metric name (loss first), one line per split; `points` are MetricPoints
    (`{"step", "split", "name", "value", ...}`). `fmt` is "png" or "svg"."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        value, step = p.get("value"), p.get("step")
        if value is None or step is None or not math.isfinite(value):
            continue
        series[p.get("name") or "value"][p.get("split") or "train"].append((step, value))
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
            pts = sorted(series[name][split])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=split, linewidth=1.2)
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
