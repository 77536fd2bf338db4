"""PNG plots of simulated sweeps: the throughput / per-user frontier (like the paper's Fig. 7) and the
throughput and verification budget against concurrency (like its Fig. 8). matplotlib is imported lazily
(it is an optional dependency: ``pip install dspark[plot]``). Every figure is titled as simulated, unless
`plot_frontier` is given another `kind` (the engine's measured frontier, `scripts/bench_frontier.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dspark.errors import ConfigError
from dspark.sim.engine import SimResult
from dspark.sim.sweep import CurvePoint


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'dspark[plot]' (or pass --no-plots)") from None
    return plt


_STYLES = ("-", "--", ":", "-.")


def _by_policy(results: Sequence[CurvePoint]) -> dict[str, list[CurvePoint]]:
    groups: dict[str, list[CurvePoint]] = {}
    for r in results:
        groups.setdefault(r.policy, []).append(r)
    for rows in groups.values():
        rows.sort(key=lambda r: (r.concurrency or 0, r.rate or 0.0))
    return groups


def plot_frontier(results: Sequence[CurvePoint], path: str | Path, title: str, slas: Sequence[float] = (),
                  kind: str = "SIMULATED") -> Path:
    """Aggregate tok/s per GPU against per-user tok/s, one line per policy (points ordered by load)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (policy, rows) in enumerate(_by_policy(results).items()):
        style = dict(marker="o", ms=3, ls=_STYLES[i % len(_STYLES)], label=policy)
        ax.plot([r.per_user_mean for r in rows], [r.throughput for r in rows], **style)
    for sla in slas:
        ax.axvline(sla, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("per-user speed (tok/s/user)")
    ax.set_ylabel("throughput (tok/s/GPU)")
    ax.set_title(f"{kind}: {title}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_load(results: Sequence[SimResult], path: str | Path, title: str) -> Path:
    """Two panels against concurrency: aggregate throughput, and mean verification budget per request."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, (policy, rows) in enumerate(_by_policy(results).items()):
        rows = [r for r in rows if r.concurrency is not None]
        conc = [r.concurrency for r in rows]
        style = dict(marker="o", ms=3, ls=_STYLES[i % len(_STYLES)], label=policy)
        top.plot(conc, [r.throughput for r in rows], **style)
        bottom.plot(conc, [r.mean_budget for r in rows], **style)
    top.set_ylabel("throughput (tok/s/GPU)")
    bottom.set_ylabel("verified tokens / request / round")
    bottom.set_xlabel("concurrent requests")
    bottom.set_xscale("log", base=2)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    top.set_title(f"SIMULATED: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
