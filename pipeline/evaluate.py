"""Scoring a classifier and writing the evaluation report beside the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from artifact.registry import write_json


def score(y_true: list[str], y_pred: list[str] | np.ndarray, labels: list[str]) -> dict[str, Any]:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [label for label in labels if label in set(y_true)]
    return {
        "rows": len(y_true),
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)), 4),
        "per_class": {
            label: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def write_report(directory: Path, metrics: dict[str, Any], labels: list[str]) -> None:
    """``metrics.json``, ``per_class.md`` and ``confusion_matrix.png`` for the held-out split."""
    write_json(directory / "metrics.json", metrics)
    holdout = metrics["holdout"]
    lines = ["| label | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for label, row in holdout["per_class"].items():
        lines.append(f"| {label} | {row['precision']} | {row['recall']} | {row['f1']} | {row['support']} |")
    lines.append(f"\naccuracy {holdout['accuracy']}, macro-F1 {holdout['macro_f1']} on {holdout['rows']} rows\n")
    (directory / "per_class.md").write_text("\n".join(lines))
    _plot_confusion(directory / "confusion_matrix.png", np.array(holdout["confusion_matrix"]), labels)


def _plot_confusion(path: Path, matrix: np.ndarray, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(6.0, 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
