"""PNG figures of an evaluation: reliability diagrams before/after STS (Fig. 6), per-slot acceptance
(Fig. 2) and the confidence-threshold sweep (Fig. 5). matplotlib is imported lazily, with the Agg
backend, only when a figure is drawn (optional dependency: ``pip install 'dspark[plot]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from dspark.errors import ConfigError
from dspark.eval.reliability import ReliabilityBins


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("eval plots need matplotlib (pip install 'dspark[plot]'), or pass --no-plots") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _curve(ax, bins: ReliabilityBins, label: str, style: str) -> None:
    keep = bins.count > 0
    ax.plot(bins.mean_pred[keep], bins.observed[keep], style, ms=4, label=label)


def plot_reliability(before: Sequence[ReliabilityBins], after: Sequence[ReliabilityBins] | None, path: str | Path,
                     title: str = "", ece_before: Sequence[float | None] = (),
                     ece_after: Sequence[float | None] = ()) -> Path:
    """One panel per slot: observed prefix survival against predicted a_k, raw (and after STS)."""
    plt = _plt()
    n = len(before)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.0 * rows), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= n:
            ax.axis("off")
            continue
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        _curve(ax, before[k], "raw" + _ece_label(ece_before, k), "o-")
        if after is not None:
            _curve(ax, after[k], "STS" + _ece_label(ece_after, k), "s--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"slot {k + 1}", fontsize=9)
        ax.set_xlabel("predicted a_k", fontsize=8)
        ax.set_ylabel("observed survival", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _ece_label(eces: Sequence[float | None], k: int) -> str:
    return f" (ECE {100 * eces[k]:.1f}%)" if k < len(eces) and eces[k] is not None else ""


def plot_acceptance(curves: Mapping[str, Sequence[float | None]], path: str | Path, title: str = "",
                    ylabel: str = "conditional acceptance") -> Path:
    """Per-slot acceptance, one line per dataset / domain / drafter."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for i, (name, values) in enumerate(curves.items()):
        xs = [k + 1 for k, v in enumerate(values) if v is not None]
        ax.plot(xs, [v for v in values if v is not None], marker="o", ms=3, ls=("-", "--", ":", "-.")[i % 4],
                label=name)
    ax.set_xlabel("draft slot k")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_threshold_sweep(sweep: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Tokens/step and accepted vs rejected drafts per step (bars), and the acceptance rate, against t."""
    plt = _plt()
    ts = [row["threshold"] for row in sweep]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.035
    left.bar([t - width / 2 for t in ts], [row["accepted_per_step"] for row in sweep], width, label="accepted / step")
    left.bar([t + width / 2 for t in ts], [row["rejected_per_step"] for row in sweep], width, label="rejected / step")
    left.plot(ts, [row["tokens_per_step"] for row in sweep], "ko-", ms=3, label="tokens / step")
    left.set_xlabel("confidence threshold t")
    left.set_ylabel("tokens per round")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    rates = [row["acceptance_rate"] for row in sweep]
    right.plot(ts, [r if r is not None else float("nan") for r in rates], "o-", ms=3)
    right.set_xlabel("confidence threshold t")
    right.set_ylabel("acceptance rate of verified drafts")
    right.set_ylim(0, 1.02)
    right.set_xlim(left.get_xlim())
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
