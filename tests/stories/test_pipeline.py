"""The training pipeline, as a user runs it: a config and a CSV in, a verified artifact out."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.manifest import ArtifactError, read_manifest
from artifact.registry import list_versions, write_version
from artifact.trust import load_model, verify
from pipeline.cli import main as pipeline_main
from support import ROOT, clean_env, trust

CONFIGS = ROOT / "pipeline" / "configs"


def run_train(config: Path, models: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--config", str(config), "--models-dir", str(models), *extra],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=300,
    )


def test_train_prints_the_new_version_path_last_and_the_artifact_predicts(tmp_path: Path) -> None:
    result = run_train(CONFIGS / "sample.toml", tmp_path)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "sample" / "1"
    assert {"model.joblib", "manifest.json", "metrics.json", "per_class.md", "mistakes.md", "confusion_matrix.png"} <= {
        p.name for p in path.iterdir()
    }
    for step in ("loading", "fitting", "evaluating", "writing", "done: sample v1"):
        assert step in result.stderr

    model, manifest = load_model(path, trust())
    texts = [row.input["description"] for row in manifest.golden]
    assert list(model.predict(texts)) == [row.predicted for row in manifest.golden]


def test_manifest_describes_the_artifact(registry: Path) -> None:
    path = registry / "sample" / "2"
    manifest = verify(path, trust())
    raw = json.loads((path / "manifest.json").read_text())
    assert manifest.artifact.sha256 == hashlib.sha256((path / "model.joblib").read_bytes()).hexdigest()
    assert manifest.artifact.size == (path / "model.joblib").stat().st_size
    assert (manifest.name, manifest.version, manifest.model["kind"]) == ("sample", 2, "tfidf-linear")
    assert set(raw["runtime"]) == {"python", "sklearn", "numpy", "joblib"}
    assert manifest.model["params"]["classifier"] == "svm"
    holdout = manifest.metrics["holdout"]
    assert {"accuracy", "macro_f1", "per_class"} <= set(holdout)
    assert set(holdout["per_class"]) == set(manifest.labels)
    assert {"precision", "recall", "f1", "support"} == set(holdout["per_class"]["Energy"])
    assert "short" in manifest.metrics["eval_sets"] and "short" in manifest.eval_sets
    assert manifest.metrics["cv"]["folds"] == 3
    assert manifest.dataset.rows == 660 and len(manifest.dataset.sha256) == 64
    assert sum(manifest.dataset.label_counts.values()) == 660
    assert [f.model_dump() for f in manifest.input_schema.fields] == [{"name": "description", "type": "string"}]
    assert len(manifest.labels) == 11
    assert len(manifest.golden) == 40
    assert manifest.training_seconds > 0 and manifest.created_at
    assert "git_revision" in raw


def test_rule_model_is_the_first_release_behind_the_same_interface(registry: Path) -> None:
    model, manifest = load_model(registry / "sample" / "1", trust())
    assert manifest.model["kind"] == "rules"
    assert list(model.predict(["We drill for crude oil", "Nothing to see here"])) == ["Energy", "Industrials"]
    assert model.predict_proba(["a bank offering mortgage loans"]).shape == (1, 11)


def test_tabular_problem_uses_the_same_pipeline(registry: Path) -> None:
    model, manifest = load_model(registry / "company-size" / "1", trust())
    assert [f.type for f in manifest.input_schema.fields] == ["number"] * 4
    assert manifest.labels == ["large", "mid", "small"]
    assert manifest.metrics["holdout"]["accuracy"] > 0.8
    assert list(model.predict([[5000.0, 25000, 0.15, 25], [8.0, 30, 0.0, 2]])) == ["large", "small"]


def test_compare_prints_metrics_side_by_side(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pipeline_main(["compare", "sample", "1", "2", "--models-dir", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "holdout macro_f1" in out and "short accuracy" in out
    assert "rules" in out and "tfidf-linear" in out


def test_a_crash_mid_write_leaves_no_version_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import artifact.registry

    written: list[Path] = []

    def write_then_crash(path: Path, data: bytes, mode: int) -> None:
        if written:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while files were being written
        path.write_bytes(data)
        written.append(path)

    monkeypatch.setattr(artifact.registry, "write_private", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_version(tmp_path, "demo", lambda version: {"model.joblib": b"half", "manifest.json": b"{}"})
    assert written and not written[0].exists()
    assert list_versions(tmp_path, "demo") == []
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [".lock"]


def test_a_hard_crash_leftover_is_ignored_and_versions_keep_growing(tmp_path: Path) -> None:
    leftover = tmp_path / "sample" / ".tmp-1-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "model.joblib").write_bytes(b"half")
    result = run_train(CONFIGS / "sample-rules.toml", tmp_path)
    assert result.returncode == 0, result.stderr
    assert list_versions(tmp_path, "sample") == [1]
    verify(tmp_path / "sample" / "1", trust())


def test_two_concurrent_trainings_get_distinct_versions(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--config",
        str(CONFIGS / "sample.toml"),
        "--models-dir",
        str(tmp_path),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=ROOT)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    paths = sorted(out[0].strip().splitlines()[-1] for out in outs)
    assert paths == [str(tmp_path / "sample" / "1"), str(tmp_path / "sample" / "2")]
    assert [read_manifest(Path(p)).version for p in paths] == [1, 2]


def test_an_existing_version_is_never_overwritten(registry: Path, tmp_path: Path) -> None:
    shutil.copytree(registry / "sample", tmp_path / "sample")
    before = hashlib.sha256((tmp_path / "sample" / "2" / "model.joblib").read_bytes()).hexdigest()
    assert run_train(CONFIGS / "sample-rules.toml", tmp_path).returncode == 0
    assert list_versions(tmp_path, "sample") == [1, 2, 3]
    assert hashlib.sha256((tmp_path / "sample" / "2" / "model.joblib").read_bytes()).hexdigest() == before


def _config(tmp_path: Path, data: str, body: str | None = None) -> Path:
    csv = tmp_path / "data.csv"
    csv.write_text(data)
    config = tmp_path / "config.toml"
    config.write_text(
        body
        or f"""name = "bad"
[data]
path = "{csv}"
text_column = "description"
label_column = "sector"
[model]
kind = "tfidf-linear"
"""
    )
    return config


GOOD_ROWS = "".join(f'"Company {i} sells software and cloud services",Technology\n' for i in range(5)) + "".join(
    f'"Bank {i} takes deposits and makes loans",Financial Services\n' for i in range(5)
)


@pytest.mark.parametrize(
    ("data", "body", "message"),
    [
        (None, None, "does not exist"),
        ("description,sectr\n" + GOOD_ROWS, None, "no column 'sector' (did you mean 'sectr'?)"),
        ("description,sector\n", None, "has a header but no rows"),
        ("", None, "is empty"),
        ("description,sector\n" + '"sells software",Tech\n' * 6, None, "has only one class"),
        ("description,sector\n" + GOOD_ROWS + '"   ",Technology\n', None, "empty or not text in 1 row (12)"),
        ("description,sector\n" + GOOD_ROWS + '"12345",Technology\n', None, "empty or not text"),
        ("description,sector\n" + GOOD_ROWS + '"sells software",NaN\n', None, "is empty or NaN in 1 row (12)"),
        ("description,sector\n" + GOOD_ROWS, 'name = "bad"\ncolour = "blue"\n', "unknown key 'colour'"),
        ("description,sector\n" + GOOD_ROWS, "KIND", "model.kind: Input should be 'rules', 'tfidf-linear'"),
        ("description,sector\n" + GOOD_ROWS, "PARAM", "unknown key 'learning_rate' for kind 'tfidf-linear'"),
    ],
    ids=[
        "missing-file",
        "misspelled-column",
        "no-rows",
        "empty-file",
        "one-class",
        "blank-text",
        "non-text",
        "nan-label",
        "unknown-key",
        "unknown-kind",
        "unknown-param",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, data: str | None, body: str | None, message: str
) -> None:
    config = _config(tmp_path, data or "")
    if data is None:
        (tmp_path / "data.csv").unlink()
    if body in ("KIND", "PARAM"):
        text = config.read_text()
        text = (
            text.replace('"tfidf-linear"', '"deep-magic"')
            if body == "KIND"
            else text + ("[model.params]\nlearning_rate = 0.1\n")
        )
        config.write_text(text)
    elif body:
        config.write_text(
            body + f'[data]\npath = "{tmp_path / "data.csv"}"\ntext_column = "description"\n'
            'label_column = "sector"\n[model]\nkind = "rules"\n'
        )
    models = tmp_path / "models"
    result = run_train(config, models)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert not models.exists() or not any(models.rglob("model.joblib"))


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_train(tmp_path / "nope.toml", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: config file {tmp_path / 'nope.toml'} does not exist"


def test_a_missing_eval_set_fails_before_anything_is_written(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        (CONFIGS / "sample.toml")
        .read_text()
        .replace("../../data/sample/companies_short.csv", str(tmp_path / "gone.csv"))
        .replace("../../data/sample/companies.csv", str(ROOT / "data/sample/companies.csv"))
    )
    result = run_train(config, tmp_path / "models")
    assert result.returncode == 2 and "gone.csv does not exist" in result.stderr
    assert not (tmp_path / "models").exists()


def test_search_records_the_cv_table_and_uses_the_best_params(tmp_path: Path) -> None:
    config = tmp_path / "search.toml"
    config.write_text(
        (CONFIGS / "sample.toml").read_text().replace("../../data", str(ROOT / "data"))
        + ('\n[search]\ncv = 2\nspace = { "clf__estimator__C" = [0.1, 1.0] }\n')
    )
    result = run_train(config, tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "sample" / "1")
    assert manifest.search is not None
    assert [row["params"] for row in manifest.search["table"]] == [
        {"clf__estimator__C": 0.1},
        {"clf__estimator__C": 1.0},
    ]
    assert manifest.search["best_params"]["clf__estimator__C"] in (0.1, 1.0)


def test_verify_refuses_a_tampered_model(registry: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sample" / "2"
    shutil.copytree(registry / "sample" / "2", copy)
    data = bytearray((copy / "model.joblib").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.joblib").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256 .* does not match"):
        load_model(copy, trust())


@pytest.mark.realdata
def test_real_data_meets_the_quality_bar(shared_data: Path, tmp_path: Path) -> None:
    result = run_train(CONFIGS / "industry.toml", tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "industry" / "1")
    cv = manifest.metrics["cv"]
    assert cv["folds"] == 5
    assert cv["accuracy"] >= 0.88, cv
    assert cv["macro_f1"] >= 0.86, cv
    bloomberg = manifest.metrics["eval_sets"]["bloomberg"]
    assert bloomberg["rows"] == 2732 and bloomberg["accuracy"] > 0.8
    assert len(manifest.labels) == 11 and manifest.dataset.rows == 2871


def test_the_served_linear_model_gives_sklearns_probabilities(registry: Path) -> None:
    import numpy as np

    from artifact.linear import CalibratedLinearText
    from pipeline import kinds
    from pipeline.config import load_config
    from pipeline.data import load_dataset

    config = load_config(CONFIGS / "sample.toml")
    data = load_dataset(config.data.path, config.data)
    fitted = kinds.build(config.model).fit(data.inputs[:500], data.labels[:500])
    served, form = kinds.for_serving(fitted, data.inputs[500:])
    assert form == "CalibratedLinearText" and isinstance(served, CalibratedLinearText)
    held_out = [*data.inputs[500:], "zzz qqq", "the and of", "Oil oil OIL and gas"]  # no known word; stop words
    np.testing.assert_allclose(served.predict_proba(held_out), fitted.predict_proba(held_out), rtol=0, atol=1e-12)
    # The exception-free term counting builds scikit-learn's very matrix (the lead block included),
    # batched and one by one.
    lead, vectorizer = fitted.named_steps["lead"], fitted.named_steps["features"]
    assert served.lead == lead.sentences == 2
    for batch in [held_out, *([text] for text in held_out[-20:])]:
        want, got = vectorizer.transform(lead.transform(batch)), served.features(batch)
        assert want.dtype == got.dtype and want.shape == got.shape
        for part in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(got, part), getattr(want, part))
    # A few rows are scored without sparse matrices: the same features bit for bit, the same answers
    for text in held_out:
        want = vectorizer.transform(lead.transform([text]))
        columns, values = served.row_features(text)
        assert values.dtype == want.dtype
        np.testing.assert_array_equal(columns, want.indices)
        np.testing.assert_array_equal(values, want.data)
    one_by_one = np.vstack([served.predict_proba([text]) for text in held_out])
    np.testing.assert_allclose(one_by_one, fitted.predict_proba(held_out), rtol=0, atol=1e-12)
    assert read_manifest(registry / "sample" / "2").model["serving_form"] == "CalibratedLinearText"
