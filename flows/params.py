"""params.yaml, parsed once into typed sections; DVC, the Prefect flow and the CLI all read it here."""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from features.engineering import FeatureConfig
from features.training_set import SplitConfig
from features.validation import ValidationConfig
from models.config import ExportConfig, ModelConfig, TrainConfig
from models.tasks import TaskGraph, TaskSpec

REPO_ROOT = Path(__file__).resolve().parents[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    source: str = "generate"   # "generate" or a dataset folder in the contract layout
    format: str = "funnel"     # adapter for a non-generated source


class GenerateConfig(_Strict):
    rows: int = 200_000
    days: int = 30
    users: int | None = None
    items: int | None = None
    seed: int = 7
    start: str = "2026-09-01"


class Bound(_Strict):
    """An absolute bound on one ``task/metric`` (TFMA's GenericValueThreshold)."""

    metric: str
    op: Literal[">=", "<="]
    value: float


class ChangeBound(_Strict):
    """A bound on the change against the champion (TFMA's GenericChangeThreshold)."""

    metric: str
    max_drop: float | None = None          # higher-is-better metrics: candidate >= champion - max_drop
    max_increase: float | None = None      # lower-is-better metrics: candidate <= champion + max_increase
    max_increase_rel: float | None = None  # lower-is-better, relative: candidate <= champion * (1 + x)
    max_drop_rel: float | None = None      # higher-is-better, relative


class GateConfig(_Strict):
    absolute: list[Bound] = []
    change: list[ChangeBound] = []


class Params(_Strict):
    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    tasks: list[TaskSpec]
    features: FeatureConfig = FeatureConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()

    @property
    def task_graph(self) -> TaskGraph:
        return TaskGraph(tasks=self.tasks)


def load_params(path: Path | str | None = None) -> Params:
    path = Path(path or os.environ.get("FUNNELFLOW_PARAMS", REPO_ROOT / "params.yaml"))
    raw = yaml.safe_load(Path(path).read_text()) or {}
    params = Params(**raw)
    params.task_graph  # validate the graph's order and parents now, not at first use
    return params


@dataclass(frozen=True)
class Paths:
    """Where each step reads and writes: everything under one data dir that git ignores."""

    root: Path

    @classmethod
    def default(cls) -> "Paths":
        return cls(Path(os.environ.get("FUNNELFLOW_DATA_DIR", REPO_ROOT / "data")).resolve())

    def __getattr__(self, name: str) -> Path:
        if name in STEP_DIRS:
            return self.root / STEP_DIRS[name]
        raise AttributeError(name)


STEP_DIRS = {
    "generated": "generated",              # the generator's dataset (contract layout)
    "oracle": "oracle/oracle.parquet",     # the generator's true probabilities: never in the dataset
    "raw": "raw",                          # the checked raw snapshot
    "features": "features",                # feature tables the Feast views read
    "training_set": "training_set",
    "validation": "validation",
    "model": "model",                      # the trained candidate
    "evaluation": "evaluation",            # test metrics and plots of the candidate
    "gate": "gate",                        # blessing.json
    "bundle": "bundle",                    # the ONNX bundle of a blessed candidate
    "registry": "registry",                # versioned champions and the champion pointer
}
