"""A training config: one TOML file per problem. Unknown keys are errors, named with their place.

Relative paths in a config are resolved against the folder of the config file, so a config means
the same thing from any working directory.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError

ModelKind = Literal["rules", "tfidf-linear", "tabular"]
Metric = Literal["accuracy", "macro_f1"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    path: Path | list[Path]  # several CSVs of the same label space: one dataset, each row knowing its file
    label_column: str
    text_column: str | None = None
    feature_columns: list[str] | None = None

    @model_validator(mode="after")
    def _one_input_kind(self) -> DataConfig:
        if (self.text_column is None) == (self.feature_columns is None):
            raise ValueError("give exactly one of text_column or feature_columns")
        if self.feature_columns is not None and not self.feature_columns:
            raise ValueError("feature_columns is empty")
        if isinstance(self.path, list) and not self.path:
            raise ValueError("path is an empty list")
        return self

    @property
    def paths(self) -> list[Path]:
        return self.path if isinstance(self.path, list) else [self.path]


class SplitConfig(_Strict):
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 42
    cv_folds: int = Field(0, ge=0, description="0 skips cross-validation; otherwise >= 2")
    group_column: str | None = Field(
        None,
        description="rows with the same value (a company's ticker) always fall on the same side of every "
        "split, and the evaluation sets are scored only by models that never saw their group",
    )

    @model_validator(mode="after")
    def _folds(self) -> SplitConfig:
        if self.cv_folds == 1:
            raise ValueError("cv_folds must be 0 (off) or at least 2")
        return self


class ModelConfig(_Strict):
    kind: ModelKind
    params: dict[str, Any] = Field(default_factory=dict)


class SearchConfig(_Strict):
    method: Literal["grid", "random"] = "grid"
    space: dict[str, list[Any]]
    cv: int = Field(3, ge=2)
    n_iter: int = Field(10, ge=1)


class EvalSet(_Strict):
    name: str
    path: Path


class EvaluateConfig(_Strict):
    metric: Metric = "macro_f1"
    golden_rows: int = Field(50, ge=1, le=1000)
    sets: list[EvalSet] = Field(default_factory=list)


class TrainConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    data: DataConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig
    search: SearchConfig | None = None
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _kind_matches_input(self) -> TrainConfig:
        text = self.data.text_column is not None
        if self.model.kind in ("rules", "tfidf-linear") and not text:
            raise ValueError(f"model kind {self.model.kind!r} needs data.text_column")
        if self.model.kind == "tabular" and text:
            raise ValueError("model kind 'tabular' needs data.feature_columns, not text_column")
        if len(self.data.paths) > 1 and not self.split.group_column:
            raise ValueError(
                "several data files need split.group_column: a company's rows from each file must stay on "
                "one side of every split"
            )
        return self


def load_config(path: Path, *, data_override: Path | None = None) -> TrainConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: unknown key {where!r}") from None
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None
    base = path.resolve().parent
    if data_override:
        config.data.path = data_override.resolve()
    else:
        resolved = [(base / p).resolve() for p in config.data.paths]
        config.data.path = resolved if isinstance(config.data.path, list) else resolved[0]
    for eval_set in config.evaluate.sets:
        eval_set.path = (base / eval_set.path).resolve()
    return config
