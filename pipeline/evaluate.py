"""Scoring a classifier and writing the evaluation report beside the artifact."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from artifact.registry import json_bytes


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


def mistakes(
    texts: list[str], y_true: list[str], proba: np.ndarray, labels: list[str], n: int = 20
) -> list[dict[str, Any]]:
    """The held-out rows the model got wrong, most confident first: where the next feature is."""
    picked = proba.argmax(axis=1)
    wrong = [i for i in range(len(y_true)) if labels[picked[i]] != y_true[i]]
    wrong.sort(key=lambda i: -float(proba[i, picked[i]]))
    return [
        {
            "true": y_true[i],
            "predicted": labels[picked[i]],
            "score": round(float(proba[i, picked[i]]), 3),
            "text": texts[i],
        }
        for i in wrong[:n]
    ]


def confusions(holdout: dict[str, Any], labels: list[str]) -> list[str]:
    """Per class, in words: its recall and what it is most often mistaken for."""
    matrix = np.array(holdout["confusion_matrix"])
    lines = []
    for k, label in enumerate(labels):
        total = int(matrix[k].sum())
        if not total:
            continue
        others = [(int(matrix[k, j]), labels[j]) for j in range(len(labels)) if j != k and matrix[k, j]]
        worst = max(others, default=None)
        lines.append(
            f"{label}: {matrix[k, k] / total:.0%} of {total}"
            + (f", most often taken for {worst[1]} ({worst[0]})" if worst else "")
        )
    return lines


def report_files(metrics: dict[str, Any], labels: list[str], wrong: list[dict[str, Any]]) -> dict[str, bytes]:
    """``metrics.json``, ``per_class.md``, ``mistakes.md`` and ``confusion_matrix.png`` for the held-out
    split, made in memory: the manifest lists their sha256, so they are signed with it."""
    holdout = metrics["holdout"]
    lines = ["| label | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for label, row in holdout["per_class"].items():
        lines.append(f"| {label} | {row['precision']} | {row['recall']} | {row['f1']} | {row['support']} |")
    lines.append(f"\naccuracy {holdout['accuracy']}, macro-F1 {holdout['macro_f1']} on {holdout['rows']} rows\n")
    listing = ["| true | predicted | score | text |", "|---|---|---|---|"]
    for row in wrong:
        text = row["text"].replace("|", "/").replace("\n", " ")
        text = text if len(text) <= 240 else text[:239] + "…"
        listing.append(f"| {row['true']} | {row['predicted']} | {row['score']} | {text} |")
    return {
        "metrics.json": json_bytes(metrics),
        "per_class.md": "\n".join(lines).encode(),
        "mistakes.md": (
            "The held-out rows the model got wrong, most confident first.\n\n" + "\n".join(listing)
        ).encode(),
        "confusion_matrix.png": _plot_confusion(
            np.array(holdout["confusion_matrix"]),
            labels,
            f"held-out: {metrics['grouped_by']} values never seen in training"
            if metrics.get("grouped_by")
            else "held-out",
        ),
    }


def _plot_confusion(matrix: np.ndarray, labels: list[str], title: str) -> bytes:
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
    ax.set_title(title, fontsize=9)
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, dpi=110, format="png")
    plt.close(fig)
    return out.getvalue()
