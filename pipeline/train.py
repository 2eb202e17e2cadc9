"""The training pipeline: config -> data -> (search) -> cross-validation -> fit -> evaluate -> artifact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.base import clone
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_validate,
    train_test_split,
)

from artifact.manifest import FieldSpec, GoldenRow, InputSchema, Manifest
from artifact.registry import write_json, write_model_file, write_version
from artifact.signing import sign
from artifact.trust import runtime_versions
from pipeline import evaluate, kinds
from pipeline.config import TrainConfig
from pipeline.data import Dataset, load_dataset
from pipeline.errors import ConfigError

N_JOBS = min(2, os.cpu_count() or 1)
SCORERS = {"accuracy": "accuracy", "macro_f1": "f1_macro"}


def progress(message: str) -> None:
    print(f"[train] {message}", file=sys.stderr, flush=True)


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _min_class(labels: list[str]) -> int:
    return min(Counter(labels).values())


def _search(config: TrainConfig, estimator: Any, x: Any, y: list[str]) -> tuple[Any, dict[str, Any]]:
    assert config.search is not None
    space = config.search.space
    cv = StratifiedKFold(config.search.cv, shuffle=True, random_state=config.split.seed)
    scoring = SCORERS[config.evaluate.metric]
    searcher: GridSearchCV | RandomizedSearchCV
    if config.search.method == "grid":
        searcher = GridSearchCV(estimator, space, cv=cv, scoring=scoring, n_jobs=N_JOBS)
    else:
        searcher = RandomizedSearchCV(
            estimator,
            space,
            n_iter=config.search.n_iter,
            cv=cv,
            scoring=scoring,
            n_jobs=N_JOBS,
            random_state=config.split.seed,
        )
    try:
        searcher.fit(x, y)
    except ValueError as exc:
        if "Invalid parameter" in str(exc):
            raise ConfigError(f"search.space: {exc}".splitlines()[0]) from None
        raise
    results = searcher.cv_results_
    table = [
        {
            "params": {k: _plain(v) for k, v in params.items()},
            "mean_score": round(float(mean), 4),
            "std_score": round(float(std), 4),
            "rank": int(rank),
        }
        for params, mean, std, rank in zip(
            results["params"],
            results["mean_test_score"],
            results["std_test_score"],
            results["rank_test_score"],
            strict=True,
        )
    ]
    best = {k: _plain(v) for k, v in searcher.best_params_.items()}
    return clone(estimator).set_params(**searcher.best_params_), {
        "method": config.search.method,
        "metric": config.evaluate.metric,
        "best_params": best,
        "best_score": round(float(searcher.best_score_), 4),
        "table": table,
    }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _cross_validate(config: TrainConfig, estimator: Any, data: Dataset) -> dict[str, Any] | None:
    folds = config.split.cv_folds
    if not folds:
        return None
    if _min_class(data.labels) < folds:
        progress(f"skipping {folds}-fold cross-validation: a class has fewer than {folds} rows")
        return None
    cv = StratifiedKFold(folds, shuffle=True, random_state=config.split.seed)
    result = cross_validate(
        estimator,
        data.inputs,
        data.labels,
        cv=cv,
        n_jobs=N_JOBS,
        scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"},
    )
    return {
        "folds": folds,
        "accuracy": round(float(result["test_accuracy"].mean()), 4),
        "accuracy_std": round(float(result["test_accuracy"].std()), 4),
        "macro_f1": round(float(result["test_macro_f1"].mean()), 4),
        "macro_f1_std": round(float(result["test_macro_f1"].std()), 4),
    }


def train(config: TrainConfig, models_dir: Path, signer: Ed25519PrivateKey) -> tuple[Path, Manifest]:
    """Train, evaluate, sign and register a new version. Raises before writing anything if input is bad."""
    started = time.perf_counter()
    progress(f"loading {config.data.path}")
    data = load_dataset(config.data.path, config.data)
    eval_sets = {s.name: load_dataset(s.path, config.data) for s in config.evaluate.sets}
    progress(
        f"{data.fingerprint.rows} rows, {len(data.fingerprint.label_counts)} classes"
        + "".join(f"; eval set {n}: {d.fingerprint.rows} rows" for n, d in eval_sets.items())
    )
    estimator: Any = kinds.build(config.model)  # a scikit-learn estimator or the rule model
    params = kinds.resolved_params(config.model)

    indices = np.arange(len(data.labels))
    stratify = data.labels if _min_class(data.labels) >= 2 else None
    if stratify is None:
        progress("a class has a single row: the held-out split is not stratified")
    train_idx, test_idx = train_test_split(
        indices, test_size=config.split.test_size, random_state=config.split.seed, stratify=stratify
    )
    x_train = _take(data.inputs, train_idx)
    y_train = [data.labels[i] for i in train_idx]
    x_test = _take(data.inputs, test_idx)
    y_test = [data.labels[i] for i in test_idx]

    search = None
    if config.search:
        progress(f"searching {config.search.method} over {', '.join(config.search.space)}")
        estimator, search = _search(config, estimator, x_train, y_train)
        progress(f"best {config.evaluate.metric} {search['best_score']} with {search['best_params']}")

    cv = None
    if config.split.cv_folds:
        progress(f"{config.split.cv_folds}-fold cross-validation on all {len(indices)} rows")
        cv = _cross_validate(config, estimator, data)
        if cv:
            progress(f"cv accuracy {cv['accuracy']}, macro-F1 {cv['macro_f1']}")

    progress(f"fitting {config.model.kind} on {len(train_idx)} rows")
    fit_started = time.perf_counter()
    fitted = estimator.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - fit_started
    model, serving_form = kinds.for_serving(fitted, x_test)
    labels = [str(c) for c in model.classes_]

    progress(f"evaluating on {len(test_idx)} held-out rows")
    predicted = [str(p) for p in model.predict(x_test)]
    metrics: dict[str, Any] = {"holdout": evaluate.score(y_test, predicted, labels), "cv": cv, "eval_sets": {}}
    for name, eval_data in eval_sets.items():
        eval_pred = model.predict(eval_data.inputs)
        metrics["eval_sets"][name] = evaluate.score(eval_data.labels, eval_pred, labels)
        progress(
            f"eval set {name}: accuracy {metrics['eval_sets'][name]['accuracy']}, "
            f"macro-F1 {metrics['eval_sets'][name]['macro_f1']}"
        )
    metrics["fit_seconds"] = round(fit_seconds, 3)

    golden_idx = test_idx[: config.evaluate.golden_rows]
    golden = [
        GoldenRow(input=row, label=data.labels[i], predicted=predicted[pos])
        for pos, (i, row) in enumerate(zip(golden_idx, data.rows(golden_idx), strict=True))
    ]
    schema = InputSchema(
        fields=[FieldSpec(name=f, type="string" if config.data.text_column else "number") for f in data.fields]
    )

    written: list[Manifest] = []

    def fill(directory: Path, version: int) -> None:
        progress(f"writing {config.name} version {version}")
        digest = write_model_file(directory, model)
        manifest = Manifest(
            name=config.name,
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            artifact=digest,
            runtime=runtime_versions(),
            model={"kind": config.model.kind, "params": params, "serving_form": serving_form},
            input_schema=schema,
            labels=labels,
            metric=config.evaluate.metric,
            metrics=metrics,
            dataset=data.fingerprint,
            eval_sets={n: d.fingerprint for n, d in eval_sets.items()},
            git_revision=git_revision(),
            training_seconds=round(time.perf_counter() - started, 3),
            golden=golden,
            search=search,
            config=config.model_dump(mode="json"),
        )
        evaluate.write_report(directory, metrics, labels)
        write_json(directory / "manifest.json", manifest.model_dump(mode="json"))
        progress(f"signed by key {sign(directory, signer)}")
        written.append(manifest)

    path = write_version(models_dir, config.name, fill)
    return path, written[-1]


def _take(inputs: list[str] | np.ndarray, idx: np.ndarray) -> list[str] | np.ndarray:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]
