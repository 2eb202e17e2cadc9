"""How rows are divided for evaluation: the held-out split and the cross-validation folds, stratified by
label and, when the config names a group column (``split.group_column``, a company's ticker), never
dividing a group, so that a company's rows are all on one side of every split. An evaluation set is
then scored only by models that never saw its company (:func:`unseen`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold, train_test_split

from pipeline.config import SplitConfig
from pipeline.errors import DataError


def min_class(labels: Sequence[str]) -> int:
    return min(Counter(labels).values())


def held_out(config: SplitConfig, labels: list[str], groups: list[str] | None) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and held-out row indices, and how they were drawn (for the progress line)."""
    indices = np.arange(len(labels))
    if groups is not None:
        # A group-aware splitter has no test_size: the held-out part is one of round(1 / test_size)
        # folds, stratified as far as whole groups allow.
        k = max(2, round(1 / config.test_size))
        if len(set(groups)) < 2:
            raise DataError(
                f"split.group_column {config.group_column!r}: every row is in one group: nothing to hold out"
            )
        if max(Counter(labels).values()) >= k and len(set(groups)) >= k:
            train_idx, test_idx = next(folds(config, k).split(indices, labels, groups))
            return train_idx, test_idx, f"one of {k} folds grouped by {config.group_column}"
        shuffle = GroupShuffleSplit(1, test_size=config.test_size, random_state=config.seed)
        train_idx, test_idx = next(shuffle.split(indices, labels, groups))
        return train_idx, test_idx, f"grouped by {config.group_column}, not stratified (every class is that small)"
    stratify = labels if min_class(labels) >= 2 else None
    train_idx, test_idx = train_test_split(
        indices, test_size=config.test_size, random_state=config.seed, stratify=stratify
    )
    return train_idx, test_idx, "stratified" if stratify is not None else "not stratified (a class has a single row)"


def folds(config: SplitConfig, n_splits: int) -> StratifiedKFold | StratifiedGroupKFold:
    """The cross-validation splitter: grouped when the config names a group column (pass the groups to
    its ``split``)."""
    if config.group_column:
        return StratifiedGroupKFold(n_splits, shuffle=True, random_state=config.seed)
    return StratifiedKFold(n_splits, shuffle=True, random_state=config.seed)


def unseen(
    groups: list[str], fold_models: list[tuple[Any, set[str]]], final: Any, final_groups: set[str], known: set[str]
) -> list[tuple[Any, list[int]]]:
    """Which rows of an evaluation set each model scores, so that no row is scored by a model that saw
    its group: with cross-validation (``fold_models``: each fold's model and the groups it held out),
    every row of a known group by the fold that held it out and the rows of groups never trained on by
    the final model; without, only the rows whose group the final model did not train on
    (``final_groups``). ``known``: every group in the training data."""
    if fold_models:
        plan = [(model, [i for i, g in enumerate(groups) if g in held]) for model, held in fold_models]
        plan.append((final, [i for i, g in enumerate(groups) if g not in known]))
    else:
        plan = [(final, [i for i, g in enumerate(groups) if g not in final_groups])]
    return [(model, rows) for model, rows in plan if rows]
