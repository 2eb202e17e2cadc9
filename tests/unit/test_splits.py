"""Evaluation grouped by company: whatever the data and the config, no group is ever on both sides of
the held-out split or of a cross-validation fold, and no row of an evaluation set is scored by a model
that saw its group."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import splits
from pipeline.config import SplitConfig

LABELS = ["Energy", "Technology", "Utilities"]


@st.composite
def grouped_rows(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Companies with one to three rows each (descriptions from several sources), one label each."""
    companies = draw(st.integers(2, 60))
    labels: list[str] = []
    groups: list[str] = []
    for company in range(companies):
        label = LABELS[company % len(LABELS)]
        for _ in range(draw(st.integers(1, 3))):
            labels.append(label)
            groups.append(f"T{company}")
    return labels, groups


@settings(max_examples=60, deadline=None)
@given(
    rows=grouped_rows(),
    test_size=st.sampled_from([0.2, 0.25, 0.3, 0.5]),
    folds=st.integers(2, 4),
    seed=st.integers(0, 10_000),
)
def test_no_group_is_ever_on_both_sides_of_any_split(
    rows: tuple[list[str], list[str]], test_size: float, folds: int, seed: int
) -> None:
    labels, groups = rows
    config = SplitConfig(test_size=test_size, seed=seed, cv_folds=folds, group_column="ticker")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer groups than folds: sklearn says so
        train, test, _ = splits.held_out(config, labels, groups)
        assert len(test) and not {groups[i] for i in train} & {groups[i] for i in test}
        assert sorted([*train, *test]) == list(range(len(labels)))
        if splits.min_class(labels) < folds:
            return  # training skips cross-validation then, and says so
        for fit, held in splits.folds(config, folds).split(np.zeros(len(labels)), labels, groups):
            assert not {groups[i] for i in fit} & {groups[i] for i in held}


def test_an_evaluation_row_is_scored_only_by_a_model_that_never_saw_its_company() -> None:
    known = {"A", "B", "C", "D"}
    folds = [("fold-1", {"A", "B"}), ("fold-2", {"C", "D"})]  # each fold's model, and what it held out
    eval_groups = ["A", "C", "Z", "B", "D", "Y"]  # Z and Y: companies the training data does not have
    plan = dict(splits.unseen(eval_groups, folds, "final", {"A", "B", "C"}, known))
    assert plan == {"fold-1": [0, 3], "fold-2": [1, 4], "final": [2, 5]}
    # without cross-validation, only the companies the final model did not train on are scored
    assert dict(splits.unseen(eval_groups, [], "final", {"A", "B", "C"}, known)) == {"final": [2, 4, 5]}


def test_without_a_group_column_the_held_out_split_is_the_stratified_one() -> None:
    labels = LABELS * 20
    _, test, drawn = splits.held_out(SplitConfig(test_size=0.25, seed=1), labels, None)
    assert len(test) == 15 and drawn == "stratified"
    assert sorted(labels[i] for i in test).count("Energy") == 5


def test_one_group_alone_cannot_be_split_and_says_so() -> None:
    import pytest

    from pipeline.errors import DataError

    config = SplitConfig(group_column="ticker")
    with pytest.raises(DataError, match="every row is in one group"):
        splits.held_out(config, ["Energy", "Utilities"], ["A", "A"])


def test_two_sources_of_the_same_companies_train_as_one_dataset_grouped_across_them(tmp_path: Path) -> None:
    import csv

    from artifact.manifest import read_manifest
    from pipeline.config import load_config
    from pipeline.train import train
    from support import ROOT, signer

    with (ROOT / "data" / "sample" / "companies.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:240]
    for name, cut in (("long", None), ("short", 1)):  # the same companies, another description of each
        with (tmp_path / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, ["ticker", "description", "sector"])
            writer.writeheader()
            for row in rows:
                text = row["description"] if cut is None else row["description"].split(". ")[0] + "."
                writer.writerow(row | {"description": text})
    (tmp_path / "both.toml").write_text(
        'name = "both"\n[data]\npath = ["long.csv", "short.csv"]\ntext_column = "description"\n'
        'label_column = "sector"\n[split]\ngroup_column = "ticker"\ncv_folds = 3\n'
        '[model]\nkind = "tfidf-linear"\n[model.params]\nmin_df = 1\nlead_sentences = 2\n'
    )
    path, manifest = train(load_config(tmp_path / "both.toml"), tmp_path / "models", signer())
    assert manifest.dataset.rows == 480 and " + " in manifest.dataset.path
    assert set(manifest.metrics["cv"]["by_source"]) == {"long", "short"}
    assert all(v["rows"] == 240 for v in manifest.metrics["cv"]["by_source"].values())
    assert read_manifest(path).metrics["grouped_by"] == "ticker"


def test_several_data_files_without_a_group_column_are_refused(tmp_path: Path) -> None:
    import pytest

    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    (tmp_path / "c.toml").write_text(
        'name = "x"\n[data]\npath = ["a.csv", "b.csv"]\ntext_column = "t"\nlabel_column = "l"\n'
        '[model]\nkind = "tfidf-linear"\n'
    )
    with pytest.raises(ConfigError, match=r"several data files need split\.group_column"):
        load_config(tmp_path / "c.toml")
