"""params.yaml, parsed once into typed sections; DVC, the Prefect flow and the CLI all read it here."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from features.engineering import FeatureConfig
from features.training_set import SplitConfig
from features.validation import ValidationConfig
from models.config import ExportConfig, LossName, TrainConfig
from models.networks import ModelConfig, parse_model_config
from models.strict import Strict
from models.tasks import TaskGraph, TaskSpec

REPO_ROOT = Path(__file__).resolve().parents[1]


class ParamsError(ValueError):
    """params.yaml is missing, is not YAML, or breaks the schema: one line per problem."""


class DataConfig(Strict):
    """Where the raw store's day partitions come from."""

    source: str = "generate"   # "generate" or a dataset folder in the contract layout
    format: str = "funnel"     # adapter for a non-generated source


class GenerateConfig(Strict):
    """The synthetic funnel generator's size, seed, start date, concept drift and simulated arrival."""

    rows: int = 200_000
    days: int = 30
    users: int | None = None
    items: int | None = None
    seed: int = 7
    start: str = "2026-09-01"
    drift_from_day: int | None = Field(None, ge=1)  # the first K days unchanged, then item-side effects re-drawn
    land_days: int | None = Field(None, ge=1)       # days that have arrived (the first N); null: all


class Bound(Strict):
    """An absolute bound on one ``task/metric`` (TFMA's GenericValueThreshold)."""

    metric: str
    op: Literal[">=", "<="]
    value: float


CHANGE_LIMITS = ("max_drop", "max_increase", "max_increase_rel", "max_drop_rel")


class ChangeBound(Strict):
    """A bound on the change against the champion (TFMA's GenericChangeThreshold); exactly one limit."""

    metric: str
    max_drop: float | None = None          # higher-is-better metrics: candidate >= champion - max_drop
    max_increase: float | None = None      # lower-is-better metrics: candidate <= champion + max_increase
    max_increase_rel: float | None = None  # lower-is-better, relative: candidate <= champion * (1 + x)
    max_drop_rel: float | None = None      # higher-is-better, relative

    @model_validator(mode="after")
    def _exactly_one_limit(self) -> ChangeBound:
        found = [k for k in CHANGE_LIMITS if getattr(self, k) is not None]
        if len(found) != 1:
            raise ValueError(f"change bound on {self.metric!r} must set exactly one of {', '.join(CHANGE_LIMITS)}"
                             f" (it sets {', '.join(found) or 'none'})")
        return self

    @property
    def limit(self) -> tuple[str, float]:
        """The one limit it sets: (name, value)."""
        return next((k, v) for k in CHANGE_LIMITS if (v := getattr(self, k)) is not None)


class GateConfig(Strict):
    """Promotion bounds: absolute ones on the candidate, change ones against the champion."""

    absolute: list[Bound] = Field(default_factory=list)
    change: list[ChangeBound] = Field(default_factory=list)


class NotifyConfig(Strict):
    """Who hears of a failed or refused run of the Prefect flow (flows/notify.py)."""

    # A Prefect notification block as ``<block-type-slug>/<block-name>``; null: no notification.
    block: str | None = Field(None, pattern=r"^[^/\s]+/[^/\s]+$")


class FloatRange(Strict):
    """A float knob's search range; ``log``: sampled on a log scale (knobs that act by orders of magnitude)."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (it is {self.low})")
        return self


CHAIN_LOSSES: tuple[LossName, ...] = ("bce", "ctcvr", "dependence")  # per-task, over the chain, its likelihood
Sizes = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)]  # choices of a size knob


class ModelSpace(Strict):
    """The ``model`` knobs `funnelflow tune` searches: a range or a list of choices each; null: not searched."""

    embedding_l2: FloatRange | None = FloatRange(low=0.01, high=1.0, log=True)
    dropout: FloatRange | None = FloatRange(low=0.0, high=0.3)
    embedding_dim: Sizes | None = Field(default_factory=lambda: [8, 16, 32])
    loss: Annotated[list[LossName], Field(min_length=1)] | None = Field(default_factory=lambda: list(CHAIN_LOSSES))
    regression_weight: FloatRange | None = FloatRange(low=0.03, high=0.3, log=True)
    numeric_buckets: list[Annotated[int, Field(ge=0)]] | None = None  # e.g. [0, 16, 32]


class TrainSpace(Strict):
    """The ``train`` knobs `funnelflow tune` searches (null: not searched)."""

    lr: FloatRange | None = FloatRange(low=0.002, high=0.03, log=True)
    batch_size: Sizes | None = Field(default_factory=lambda: [1024, 2048, 4096])


class SearchSpace(Strict):
    """What `funnelflow tune` searches, in the shape of the overrides it writes (tuned.yaml)."""

    model: ModelSpace = ModelSpace()
    train: TrainSpace = TrainSpace()


class TuneConfig(Strict):
    """`funnelflow tune`'s budget and search space, and whether the pipeline trains with its result."""

    apply: bool = False   # true: train with tuned.yaml's values (beside params.yaml) when it holds any
    trials: int = Field(30, ge=1)
    timeout_minutes: float | None = Field(60.0, gt=0)  # no trial starts after this; null: no limit
    seed: int = 7
    space: SearchSpace = SearchSpace()


class ServeConfig(Strict):
    """`funnelflow serve`: where it listens, how many candidates one request may score, how often it
    looks for a new champion, and how many items' rows it keeps (flows/serve.py)."""

    host: str = Field("127.0.0.1", min_length=1)  # loopback: put a proxy in front to expose it
    port: int = Field(8000, ge=1, le=65535)
    max_candidates: int = Field(1000, ge=1)  # more items in one request: 413
    reload_seconds: float = Field(5.0, gt=0)  # the champion pointer's poll interval
    # Items' encoded rows kept between requests, per load of a Redis online store, prior in force and champion
    # (features/online.py RequestInputs); 0: none.
    item_cache: int = Field(200_000, ge=0)


class Params(Strict):
    """Every section of params.yaml, typed; ``tasks`` has no default (it defines the funnel)."""

    data: DataConfig = DataConfig()
    generate: GenerateConfig = GenerateConfig()
    tasks: list[TaskSpec] = Field(min_length=1)
    features: FeatureConfig = FeatureConfig()
    split: SplitConfig = SplitConfig()
    validation: ValidationConfig = ValidationConfig()
    model: ModelConfig = parse_model_config({})  # no name: models.networks.DEFAULT_MODEL (tafe)
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    notify: NotifyConfig = NotifyConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()

    @property
    def task_graph(self) -> TaskGraph:
        """The tasks as a checked graph (parents before children)."""
        return TaskGraph(tasks=self.tasks)

    @model_validator(mode="after")
    def _gate_metrics_exist(self) -> Params:
        """A bound on a metric that evaluation never produces would never be checked: refuse it here."""
        bounds = [("absolute", i, b.metric) for i, b in enumerate(self.gate.absolute)]
        bounds += [("change", i, c.metric) for i, c in enumerate(self.gate.change)]
        if not bounds:
            return self  # no need to import scikit-learn
        try:
            known = known_metrics(self.task_graph)
        except ValidationError:
            return self  # a bad task graph: load_params reports it
        kinds = {t.name: t.kind for t in self.tasks}
        for kind, i, metric in bounds:
            task, _, name = metric.partition("/")
            if task not in known:
                raise PydanticCustomError("gate_metric", f"gate.{kind}[{i}].metric: {metric!r} names no task "
                                          f"(tasks: {', '.join(known)}); write it as task/metric")
            if name not in known[task]:
                raise PydanticCustomError("gate_metric", f"gate.{kind}[{i}].metric: unknown metric {metric!r} "
                                          f"(known for {kinds[task]} task {task}: {', '.join(known[task])})")
        return self


def known_metrics(tasks: TaskGraph) -> dict[str, list[str]]:
    """The metric names evaluation produces per task (with an oracle), read off models.metrics itself by
    evaluating a four-row frame, so that the names cannot drift from what the gate will be given."""
    import warnings

    import pandas as pd

    from models.metrics import evaluate_predictions
    from models.networks import prediction_columns

    ids = {"impression_id": [1, 2, 3, 4]}
    labels = pd.DataFrame({**ids, **{t.column: [0.0, 1.0, 0.0, 1.0] for t in tasks.tasks}})
    preds = pd.DataFrame({**ids, **{c: [0.2, 0.7, 0.4, 0.9] for c in prediction_columns(tasks)}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = evaluate_predictions(labels, preds, tasks, oracle_df=preds)
    known: dict[str, list[str]] = {t.name: [] for t in tasks.tasks}
    for key in names:
        task, _, metric = key.partition("/")
        known[task].append(metric)
    return {t: sorted(m) for t, m in known.items()}


MODEL_SECTIONS = ("tasks", "features", "split", "model", "train")


def params_hash(params: Params) -> str:
    """sha256 of the canonical JSON of the sections that shape the model (MODEL_SECTIONS): what a
    blessing binds, so that a model judged under other params cannot be shipped under these. The
    online store only serves the features, and the offline engine returns the same rows on either
    kind, so switching them keeps the hash."""
    dumped = params.model_dump(mode="json", exclude={"features": {"online_store", "offline_store"}})
    canonical = json.dumps({k: dumped[k] for k in MODEL_SECTIONS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_params(path: Path | str | None = None, tuned: bool = True) -> Params:
    """Read and check params.yaml (default ``$FUNNELFLOW_PARAMS``, else the repo's); with ``tuned`` and
    ``tune.apply``, the values of tuned.yaml beside it in place (``apply_tuned``).

    Raises:
        ParamsError: the file is missing, is not YAML, or breaks the schema (one line per error); so
            does a bad tuned.yaml.
    """
    path = params_file(path)
    name = _shown(path)
    try:
        raw = _read_yaml(path, name)
    except FileNotFoundError:
        raise ParamsError(f"{name}: no such file (pass another one with --params)") from None
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_errors(name, exc, raw)) from exc
    try:
        TaskGraph(tasks=params.tasks)  # check the graph's order and parents now, not at first use
    except ValidationError as exc:
        raise ParamsError(_errors(name, exc, raw, "tasks")) from exc
    return apply_tuned(params, path.with_name(TUNED_FILE)) if tuned and params.tune.apply else params


TUNED_FILE = "tuned.yaml"  # `funnelflow tune`'s best values, beside the params.yaml it tuned


def apply_tuned(params: Params, path: Path) -> Params:
    """``params`` with tuned.yaml's values in place: the Prefect overrides' shape (flows/overrides.py),
    ``model`` and ``train`` keys only, tuned for the model ``params`` trains. No file: ``params``.

    Raises:
        ParamsError: the file is not YAML, breaks that shape, names another model, or its values break
            the params schema (one line per error, naming the file and the key).
    """
    from flows.overrides import GateOverrides, Overrides  # it imports this module

    name = _shown(path)
    try:
        raw = _read_yaml(path, name)
    except FileNotFoundError:
        return params
    try:
        tuned = Overrides.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_errors(name, exc, raw)) from exc
    if tuned.gate != GateOverrides():
        raise ParamsError(f"{name}: gate: tuned values are model and train keys only; remove the gate section")
    if tuned.model.name not in (None, params.model.name):
        raise ParamsError(f"{name}: model.name: tuned for {tuned.model.name}, but params.yaml trains "
                          f"{params.model.name}: run `funnelflow tune` again, or set tune.apply: false")
    return with_overrides(params, tuned.model_dump(mode="json", exclude_none=True, exclude={"gate"}), name)


def params_file(path: Path | str | None = None) -> Path:
    """The params.yaml a run reads: ``path``, else ``$FUNNELFLOW_PARAMS``, else the repo's."""
    return Path(path or os.environ.get("FUNNELFLOW_PARAMS") or REPO_ROOT / "params.yaml")


def with_overrides(params: Params, overrides: dict[str, dict[str, Any]], source: str = "overrides") -> Params:
    """``params`` with some keys of some sections replaced (the Prefect flow's typed overrides, tuned.yaml),
    checked as params.yaml is: one line per error, named after ``source``: ``overrides: train.epochs: ...``.

    Raises:
        ParamsError: the merged params break the schema.
    """
    merged = params.model_dump(mode="json")
    for section, values in overrides.items():
        merged[section] = {**merged[section], **values}
    try:
        return Params.model_validate(merged)
    except ValidationError as exc:
        raise ParamsError(_errors(source, exc, merged)) from exc


def _shown(path: Path) -> str:
    """``path`` as the user knows it: relative to the working dir when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _errors(name: str, exc: ValidationError, raw: Any, section: str = "") -> str:
    """One line per error: ``params.yaml: model.dropout: Input should be less than 1``."""
    return "\n".join(": ".join(filter(None, (name, _key(section, _in_file(e["loc"], raw)), e["msg"])))
                     for e in exc.errors())


def _in_file(loc: tuple[Any, ...], raw: Any) -> list[Any]:
    """The error's location as keys of the file: without the tag pydantic adds for a discriminated union
    (``model.mmoe.dropout`` is ``model.dropout`` in params.yaml)."""
    keys, node = [], raw
    for i, k in enumerate(loc):
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and k not in node and nxt in node:
            continue  # a union tag: the next key is in the file at this level
        keys.append(k)
        node = _child(node, k)
    return keys


def _child(node: Any, key: Any) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and isinstance(key, int) and key < len(node):
        return node[key]
    return None


def _key(section: str, loc: list[Any]) -> str:
    """An error location as a params.yaml key path: ``tasks[1].parent``, ``model.dropout``."""
    return (section + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc)).lstrip(".")


def _read_yaml(path: Path, name: str) -> Any:
    """The YAML document in ``path`` ({} when empty); a file that is not YAML is one line naming ``name``.
    FileNotFoundError is the caller's: a missing params.yaml is an error, a missing tuned.yaml is not."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{name}: not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


@dataclass(frozen=True)
class Paths:
    """Where each step reads and writes: every folder under one data dir that git ignores, except the
    reports (``reports``) that git tracks.

    Passed explicitly to every step (never through the environment), so two flows in one process
    with different data dirs cannot see each other's folders.
    """

    root: Path

    @classmethod
    def default(cls) -> Paths:
        """The data dir the user asked for: ``$FUNNELFLOW_DATA_DIR``, else ``<repo>/data``."""
        return cls(Path(os.environ.get("FUNNELFLOW_DATA_DIR", REPO_ROOT / "data")).resolve())

    @property
    def generated(self) -> Path:
        """The generator's dataset (contract layout)."""
        return self.root / "generated"

    @property
    def oracle(self) -> Path:
        """The generator's true probabilities: never part of the dataset."""
        return self.root / "oracle" / "oracle.parquet"

    @property
    def raw(self) -> Path:
        """The raw store: checked day partitions and partitions.json."""
        return self.root / "raw"

    @property
    def quarantine(self) -> Path:
        """Day partitions that broke the contract, each with its reason.txt."""
        return self.root / "quarantine"

    @property
    def features(self) -> Path:
        """Feature tables that the Feast views read."""
        return self.root / "features"

    @property
    def feast(self) -> Path:
        """Feast's registry and online store, and the records of apply and materialize."""
        return self.root / "feast"

    @property
    def training_set(self) -> Path:
        """train/validation/test Parquet files and their manifest."""
        return self.root / "training_set"

    @property
    def retrieved(self) -> Path:
        """The training set's retrieval cache: each raw day's filled point-in-time rows."""
        return self.root / "retrieved"

    @property
    def validation(self) -> Path:
        """GX summary, Data Docs and the drift reference."""
        return self.root / "validation"

    @property
    def model(self) -> Path:
        """The trained candidate."""
        return self.root / "model"

    @property
    def reports(self) -> Path:
        """Where the small records that git tracks go (metrics, plot data, the gate decision as metrics).

        The repo's data dir (``<repo>/data``, git-ignored) keeps them in ``<repo>/reports``, so that
        ``dvc metrics diff``, ``dvc plots diff`` and ``dvc exp show`` read them from git; any other data
        dir is self-contained and keeps them in itself, at the same relative paths.
        """
        return REPO_ROOT / "reports" if self.root.resolve() == (REPO_ROOT / "data").resolve() else self.root

    @property
    def evaluation(self) -> Path:
        """Test metrics and plots of the candidate (a report)."""
        return self.reports / "evaluation"

    @property
    def champion(self) -> Path:
        """The champion to beat: its version and its metrics on the candidate's test rows."""
        return self.root / "champion"

    @property
    def gate(self) -> Path:
        """The gate decision (blessing.json)."""
        return self.root / "gate"

    @property
    def bundle(self) -> Path:
        """The ONNX bundle of a blessed candidate."""
        return self.root / "bundle"

    @property
    def registry(self) -> Path:
        """Versioned champions and the champion pointer."""
        return self.root / "registry"

    @property
    def tune(self) -> Path:
        """`funnelflow tune`'s Optuna study (study.db)."""
        return self.root / "tune"
