"""PNG figure of SPS tables side by side: a profiled engine's table next to the roofline estimate.

Where it sits: `SPSTable` (profiled by `dspark.engine.profile`, measured by `scripts/bench_engine.py`,
or analytic from `dspark.scheduling.roofline`) ─ `plot_sps` ─► one PNG with two panels:

* **verify forward**: milliseconds of one target forward against the tokens it verifies (the table's
  verify curve, ``1 / SPS(B)``; log-log). Tables with few points are drawn with markers at the measured
  points, dense (analytic) tables as lines; the x range follows the measured tables when there are any.
* **per-round costs**: ``request_time(R)`` (solid) and ``draft_time(R)`` (dashed) against the request
  count R, for the tables that carry them. A roofline table puts the KV reads of attention there; a
  profiled one the step's scheduling/sampling overhead, its KV reads being inside the verify forward.

A table labelled ``"roofline X"`` gets the colour of the table labelled ``X`` (its measured twin).

matplotlib is imported lazily with the Agg backend (optional dependency: ``pip install 'dspark[plot]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.sps_table import SPSTable

DENSE_POINTS = 32  # tables with more points than this are curves (analytic), not measurements


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("SPS plots need matplotlib: pip install 'dspark[plot]'") from None
    return plt


def _request_keys(table: SPSTable) -> np.ndarray | None:
    """The request counts a table's request/draft curves were given at (None: it has neither)."""
    data = table.to_dict()
    keys = [np.asarray(data[k]["requests"], dtype=np.float64) for k in ("request_cost", "draft_cost") if k in data]
    return np.unique(np.concatenate(keys)) if keys else None


def _analytic(table: SPSTable) -> bool:
    return str(table.meta.get("source", "")).startswith("roofline") or len(table.tokens) > DENSE_POINTS


def _finish(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Log-log axes with plain tick labels, grid, labels and legend."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def plot_sps(tables: Mapping[str, SPSTable], path: str | Path, title: str = "") -> Path:
    """Draw `tables` (label -> table) into one PNG at `path` (see the module docstring); returns the path."""
    if not tables:
        raise ConfigError("plot_sps needs at least one SPS table")
    plt = _pyplot()
    measured = [t for t in tables.values() if not _analytic(t)]
    hi_tokens = max(max(t.tokens) for t in (measured or tables.values()))
    with_costs = {k: t for k, t in tables.items() if _request_keys(t) is not None}
    fig, axes = plt.subplots(1, 2 if with_costs else 1, figsize=(12 if with_costs else 6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    # a table labelled "roofline X" is drawn in the colour of the table labelled X (its measured twin)
    families = list(dict.fromkeys(label.removeprefix("roofline ") for label in tables))
    colors = {label: f"C{families.index(label.removeprefix('roofline ')) % 10}" for label in tables}
    for label, table in tables.items():
        if _analytic(table):
            x = np.unique(np.round(np.geomspace(1, hi_tokens, 200)))
            ax.plot(x, np.asarray(table.step_time(x)) * 1e3, "-", color=colors[label], label=label)
        else:
            x = np.asarray(table.tokens, dtype=np.float64)
            ax.plot(x, np.asarray(table.step_time(x)) * 1e3, "o-", ms=4, color=colors[label], label=label)
    _finish(ax, "tokens verified per forward (B)", "verify forward (ms)  = 1 / SPS(B)", "verify curve")
    if with_costs:
        ax = axes[0][1]
        measured_r = [_request_keys(t) for t in with_costs.values() if not _analytic(t)]
        hi_r = max(int(k.max()) for k in (measured_r or [_request_keys(t) for t in with_costs.values()]))
        for label, table in with_costs.items():
            analytic = _analytic(table)
            x = np.unique(np.round(np.geomspace(1, max(hi_r, 2), 100))) if analytic else _request_keys(table)
            marker = "" if analytic else "o"
            if "request_cost" in table.to_dict():
                ax.plot(x, np.asarray(table.request_time(x)) * 1e3, marker + "-", ms=4, color=colors[label],
                        label=f"{label}: request cost")
            if table.has_draft_cost:
                ax.plot(x, np.asarray(table.draft_time(x)) * 1e3, marker + "--", ms=4, color=colors[label],
                        label=f"{label}: draft cost")
        _finish(ax, "requests in the round (R)", "ms per round", "per-round costs (solid: request cost, dashed: draft cost)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
