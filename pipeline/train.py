"""The training pipeline: config -> data -> (search) -> cross-validation -> fit -> evaluate -> artifact."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, cross_validate

from artifact.manifest import FieldSpec, FileDigest, GoldenRow, InputSchema, Manifest
from artifact.registry import publish
from artifact.signing import key_id
from artifact.trust import runtime_versions
from pipeline import evaluate, feedback, kinds, splits
from pipeline.config import TrainConfig
from pipeline.data import Dataset, load_dataset, load_sources
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


def _search(
    config: TrainConfig, estimator: Any, x: Any, y: list[str], groups: list[str] | None
) -> tuple[Any, dict[str, Any]]:
    assert config.search is not None
    space = config.search.space
    cv = splits.folds(config.split, config.search.cv)
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
        searcher.fit(x, y, groups=groups)
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


def _cross_validate(
    config: TrainConfig, estimator: Any, data: Dataset
) -> tuple[dict[str, Any] | None, list[tuple[Any, set[str]]]]:
    """The cross-validated scores, and (grouped) each fold's model with the groups it held out, which
    score the evaluation sets' rows of those groups."""
    folds = config.split.cv_folds
    if not folds:
        return None, []
    if splits.min_class(data.labels) < folds:
        progress(f"skipping {folds}-fold cross-validation: a class has fewer than {folds} rows")
        return None, []
    if data.groups is not None and len(set(data.groups)) < folds:
        progress(f"skipping {folds}-fold cross-validation: fewer than {folds} {config.split.group_column} values")
        return None, []
    grouped = data.groups is not None
    result = cross_validate(
        estimator,
        data.inputs,
        data.labels,
        groups=data.groups,
        cv=splits.folds(config.split, folds),
        n_jobs=N_JOBS,
        scoring={"accuracy": "accuracy", "macro_f1": "f1_macro"},
        return_estimator=grouped,
        return_indices=grouped,
    )
    fold_models: list[tuple[Any, set[str]]] = []
    by_source: dict[str, dict[str, Any]] = {}
    if data.groups is not None:
        out_of_fold = np.empty(len(data.labels), dtype=object)
        for model, held in zip(result["estimator"], result["indices"]["test"], strict=True):
            fold_models.append((model, {data.groups[i] for i in held}))
            if data.sources is not None:
                out_of_fold[held] = model.predict(_take(data.inputs, held))
        for source in dict.fromkeys(data.sources or []):
            rows = [i for i, s in enumerate(data.sources or []) if s == source]
            scored = evaluate.score(
                [data.labels[i] for i in rows], [str(out_of_fold[i]) for i in rows], sorted(set(data.labels))
            )
            by_source[source] = {k: scored[k] for k in ("rows", "accuracy", "macro_f1")}
            progress(f"cv on {source}: accuracy {scored['accuracy']}, macro-F1 {scored['macro_f1']} ({len(rows)} rows)")
    return {
        "folds": folds,
        "grouped_by": config.split.group_column,
        "accuracy": round(float(result["test_accuracy"].mean()), 4),
        "accuracy_std": round(float(result["test_accuracy"].std()), 4),
        "macro_f1": round(float(result["test_macro_f1"].mean()), 4),
        "macro_f1_std": round(float(result["test_macro_f1"].std()), 4),
        **({"by_source": by_source} if by_source else {}),
    }, fold_models


def train(
    config: TrainConfig,
    models_dir: Path,
    signer: Ed25519PrivateKey,
    *,
    feedback_log: Path | None = None,
    feedback_hours: float | None = None,
) -> tuple[Path, Manifest]:
    """Train, evaluate, sign and register a new version. Raises before writing anything if input is bad.
    With ``feedback_log``, the labelled live predictions in it train too (:mod:`pipeline.feedback`)."""
    started = time.perf_counter()
    progress(f"loading {' + '.join(str(p) for p in config.data.paths)}")
    grouping = config.split.group_column
    data = load_sources(config.data.paths, config.data, group_column=grouping)
    used: dict[str, Any] | None = None
    if feedback_log is not None:
        extra, used = feedback.load(feedback_log, config.data, hours=feedback_hours)
        progress(f"adding {used['rows']} labelled live predictions from {feedback_log}")
        data = feedback.combined(data, extra)
    eval_sets = {s.name: load_dataset(s.path, config.data, group_column=grouping) for s in config.evaluate.sets}
    progress(
        f"{data.fingerprint.rows} rows, {len(data.fingerprint.label_counts)} classes"
        + "".join(f"; eval set {n}: {d.fingerprint.rows} rows" for n, d in eval_sets.items())
    )
    estimator: Any = kinds.build(config.model)  # a scikit-learn estimator or the rule model
    params = kinds.resolved_params(config.model)

    train_idx, test_idx, drawn = splits.held_out(config.split, data.labels, data.groups)
    progress(f"held out {len(test_idx)} rows ({drawn})")
    train_groups = [data.groups[i] for i in train_idx] if data.groups is not None else None
    x_train = _take(data.inputs, train_idx)
    y_train = [data.labels[i] for i in train_idx]
    x_test = _take(data.inputs, test_idx)
    y_test = [data.labels[i] for i in test_idx]

    search = None
    if config.search:
        progress(f"searching {config.search.method} over {', '.join(config.search.space)}")
        estimator, search = _search(config, estimator, x_train, y_train, train_groups)
        progress(f"best {config.evaluate.metric} {search['best_score']} with {search['best_params']}")

    cv: dict[str, Any] | None = None
    fold_models: list[tuple[Any, set[str]]] = []
    if config.split.cv_folds:
        by = f" grouped by {grouping}" if grouping else ""
        progress(f"{config.split.cv_folds}-fold cross-validation{by} on all {len(data.labels)} rows")
        cv, fold_models = _cross_validate(config, estimator, data)
        if cv:
            progress(f"cv accuracy {cv['accuracy']}, macro-F1 {cv['macro_f1']}")

    progress(f"fitting {config.model.kind} on {len(train_idx)} rows")
    fit_started = time.perf_counter()
    fitted = estimator.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - fit_started
    model, serving_form = kinds.for_serving(fitted, x_test)
    labels = [str(c) for c in model.classes_]

    unseen = f" of {grouping} values it never saw" if grouping else ""
    progress(f"evaluating on {len(test_idx)} held-out rows{unseen}")
    proba = model.predict_proba(x_test)
    predicted = [labels[k] for k in proba.argmax(axis=1)]
    metrics: dict[str, Any] = {
        "grouped_by": grouping,  # the metric gate compares only versions evaluated the same way
        "holdout": evaluate.score(y_test, predicted, labels),
        "cv": cv,
        "eval_sets": {},
    }
    for name, eval_data in eval_sets.items():
        how = ""
        if eval_data.groups is None or train_groups is None or data.groups is None:
            scored = evaluate.score(eval_data.labels, model.predict(eval_data.inputs), labels)
        else:
            plan = splits.unseen(eval_data.groups, fold_models, model, set(train_groups), set(data.groups))
            rows = [i for _, chosen in plan for i in chosen]
            eval_pred = [str(p) for m, chosen in plan for p in m.predict(_take(eval_data.inputs, np.array(chosen)))]
            scored = evaluate.score([eval_data.labels[i] for i in rows], eval_pred, labels)
            scored["scored"] = "out of fold" if fold_models else "companies held out from training"
            how = f" on {len(rows)} of {len(eval_data.labels)} rows, each by a model that never saw its {grouping}"
        metrics["eval_sets"][name] = scored
        progress(f"eval set {name}: accuracy {scored['accuracy']}, macro-F1 {scored['macro_f1']}{how}")
    metrics["fit_seconds"] = round(fit_seconds, 3)

    golden_idx = test_idx[: config.evaluate.golden_rows]
    golden = [
        GoldenRow(input=row, label=data.labels[i], predicted=predicted[pos])
        for pos, (i, row) in enumerate(zip(golden_idx, data.rows(golden_idx), strict=True))
    ]
    schema = InputSchema(
        fields=[FieldSpec(name=f, type="string" if config.data.text_column else "number") for f in data.fields]
    )

    def manifest_for(version: int, digest: FileDigest) -> Manifest:
        progress(f"writing {config.name} version {version}")
        return Manifest(
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
            feedback=used,
            input_profile=_profile(data),
        )

    progress(f"held-out{unseen}, per class: how much of it is right, and what it is most often taken for")
    for line in evaluate.confusions(metrics["holdout"], labels):
        progress(f"  {line}")
    wrong = evaluate.mistakes(list(x_test), y_test, proba, labels) if config.data.text_column else []
    reports = evaluate.report_files(metrics, labels, wrong)
    path, manifest = publish(models_dir, config.name, model, manifest_for, signer, reports)
    progress(f"signed by key {key_id(signer.public_key())} and verified as a service will load it")
    return path, manifest


def _profile(data: Dataset) -> dict[str, Any] | None:
    """The training inputs' 1st and 99th percentile of length in characters (text models), for drift:
    about 2% of inputs like the training ones fall outside it."""
    if isinstance(data.inputs, np.ndarray) or not data.inputs:
        return None
    low, high = np.percentile([len(text) for text in data.inputs], [1, 99])
    return {"length": [int(low), int(high)]}


def _take(inputs: list[str] | np.ndarray, idx: np.ndarray) -> list[str] | np.ndarray:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]
