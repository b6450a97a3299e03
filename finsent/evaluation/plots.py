"""PNG figures for people: confusion matrices, metrics by class, model comparison."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from finsent.core.labelset import LABELS  # noqa: E402
from finsent.evaluation.metrics import test_names  # noqa: E402

DPI = 90


def _save(fig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no timestamps: same data, same bytes
    plt.close(fig)


def confusion_figure(model: str, per_test: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """One confusion matrix (counts, row-normalised shading) per test set for one model."""
    names = list(per_test)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = np.asarray(per_test[name]["confusion_matrix"]["matrix"], dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(LABELS)):
            for j in range(len(LABELS)):
                ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                        color="white" if share[i, j] > 0.6 else "black", fontsize=9)
        ax.set_xticks(range(len(LABELS)), LABELS)
        ax.set_yticks(range(len(LABELS)), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        m = per_test[name]
        ax.set_title(f"{name}\nacc {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}", fontsize=10)
    fig.suptitle(f"Confusion matrices: {model}", fontsize=11)
    _save(fig, path)


def metrics_by_class_figure(model: str, per_test: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """Grouped bars per sentiment class: accuracy, precision, recall, F1 (one panel per test set)."""
    names = list(per_test)
    kinds = ("accuracy", "precision", "recall", "f1")
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False, sharey=True)
    x = np.arange(len(LABELS))
    width = 0.8 / len(kinds)
    for ax, name in zip(axes[0], names):
        pc = per_test[name]["per_class"]
        for k, kind in enumerate(kinds):
            vals = [pc[lab][kind] for lab in LABELS]
            bars = ax.bar(x + (k - (len(kinds) - 1) / 2) * width, vals, width, label=kind)
            ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
        ax.set_xticks(x, LABELS)
        ax.set_ylim(0, 1.08)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("score")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Metrics by class: {model}", fontsize=11)
    _save(fig, path)


def model_comparison_figure(results: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path,
                            metric: str = "macro_f1") -> None:
    """Grouped bars: one group per test set, one bar per model scored on it (a model that was not
    scored on a test set gets no bar, rather than a bar at zero). Colours are fixed per model."""
    models = list(results)
    tests = test_names(results)
    colours = {m: plt.get_cmap("tab10")(k % 10) for k, m in enumerate(models)}
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(2.6 + 2.2 * len(tests), 4))
    labelled: set[str] = set()
    for i, test in enumerate(tests):
        scored = [m for m in models if test in results[m]]
        for k, model in enumerate(scored):
            bars = ax.bar(i + (k - (len(scored) - 1) / 2) * width, results[model][test][metric], width,
                          color=colours[model], label=None if model in labelled else model)
            labelled.add(model)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(np.arange(len(tests)), tests)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{metric} by model and test set", fontsize=11)
    _save(fig, path)


def throughput_figure(rates: Mapping[str, float], baseline: str, path: str | Path, title: str = "") -> None:
    """Horizontal bars of posts/s per way of running a model, each labelled with its ratio to ``baseline``."""
    names = list(rates)
    values = [rates[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.4))
    bars = ax.barh(np.arange(len(names)), values,
                   color=["0.6" if n == baseline else plt.get_cmap("tab10")(0) for n in names])
    ax.bar_label(bars, labels=[f"{v:.0f}/s  ({v / rates[baseline]:.2f}x)" for v in values], fontsize=8, padding=2)
    ax.axvline(rates[baseline], color="0.3", linestyle="--", linewidth=1)
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.3)
    ax.set_xlabel("posts per second (median of the runs)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"throughput against {baseline}", fontsize=10)
    _save(fig, path)
