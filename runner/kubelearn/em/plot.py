"""PNG plots of run metrics against step (``pip install kubelearn[plot]`` for matplotlib).

One panel per metric name (``loss`` first); in each, a line per run and log type: train
solid, val dashed, test dotted. A metric whose every line is flat (one value over several
steps, such as ``label/mean`` or a fixed learning rate) gets no panel. Several runs are
overlaid, one colour each. The PNG carries the plotted series as JSON in its
``kubelearn:series`` text chunk, so scripts can check what a picture shows without reading
pixels.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from kubelearn import paths
from kubelearn.em.reader import RunRecord

SERIES_KEY = "kubelearn:series"
_STYLES = {"train": "-", "val": "--", "test": ":"}


@dataclass
class Series:
    run: str
    type: str
    metric: str
    label: str
    steps: list[int]
    values: list[float | None]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'kubelearn[plot]'") from None
    return Figure, FigureCanvasAgg


def collect_series(runs: list[RunRecord]) -> list[Series]:
    """The lines to draw, in panel order (``loss`` first, then by first appearance)."""
    several = len(runs) > 1
    out: list[Series] = []
    for run in runs:
        for kind in run.metrics:
            for name in run.metric_names(kind):
                steps, values = run.series(kind, name)
                label = f"{run.id} {kind}" if several else kind
                finite = [v if math.isfinite(v) else None for v in values]
                out.append(Series(run.id, kind, name, label, steps, finite))
    order: dict[str, int] = {"loss": 0}
    for s in out:
        order.setdefault(s.metric, len(order))
    return sorted(out, key=lambda s: order[s.metric])


def flat_metrics(series: list[Series]) -> list[str]:
    """Metrics whose lines all hold one and the same value over several steps: a flat line
    says nothing a table would not. A single point (one evaluation) is kept."""
    groups: dict[str, list[Series]] = {}
    for s in series:
        groups.setdefault(s.metric, []).append(s)
    return [metric for metric, group in groups.items()
            if all(len(s.steps) > 1 for s in group)
            and len({v for s in group for v in s.values if v is not None}) == 1]


def plot_runs(runs: list[RunRecord], output: str | os.PathLike[str]) -> list[Series]:
    """Draw the metrics of ``runs`` into the PNG ``output``, but for flat ones (unless all
    are flat); the series drawn."""
    if not runs:
        raise ValueError("no runs to plot")
    series = collect_series(runs)
    if not series:
        raise ValueError(f"no metrics to plot in {', '.join(r.id for r in runs)}")
    flat = set(flat_metrics(series))
    if len(flat) < len({s.metric for s in series}):
        series = [s for s in series if s.metric not in flat]
    Figure, FigureCanvasAgg = _matplotlib()
    metrics = list(dict.fromkeys(s.metric for s in series))
    ncols = min(2, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(6 * ncols, 4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = {m: fig.add_subplot(nrows, ncols, i + 1) for i, m in enumerate(metrics)}
    colours = {}
    for s in series:
        key = s.run if len(runs) > 1 else s.type
        colour = colours.setdefault(key, f"C{len(colours) % 10}")
        values = [math.nan if v is None else v for v in s.values]
        marker = "o" if len(s.steps) == 1 else None
        axes[s.metric].plot(
            s.steps, values, _STYLES.get(s.type, "-."), color=colour, marker=marker, label=s.label
        )
    for metric, ax in axes.items():
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    title = runs[0].id if len(runs) == 1 else f"{len(runs)} runs"
    fig.suptitle(title)
    with paths.replacing(output) as tmp:  # a symlink at output is replaced, not followed
        fig.savefig(
            tmp,
            format="png",
            metadata={"Title": title, SERIES_KEY: json.dumps([asdict(s) for s in series])},
        )
    return series
