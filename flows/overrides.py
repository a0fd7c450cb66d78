"""The Prefect flow's typed overrides of params.yaml: which model and its shared knobs, training, gate bounds.

A deployment's run (scheduled, or edited in the Prefect UI's run form) can change these without a new
params.yaml; every field left null keeps the file's value. The merged params are checked by the same
``Params`` model as the file (flows.params.with_overrides), so an out-of-range value is one line naming
the key, and the run records the params it used (``params.used.yaml`` beside the registry's release).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from flows.params import Bound, ChangeBound, Params, with_overrides
from models.config import LossName
from models.networks import MODEL_NAMES, switch_model
from models.strict import Strict

# A drop-down of the registered models in the UI's form; the name itself is checked by Params.
ModelName = Annotated[str, Field(json_schema_extra={"enum": list(MODEL_NAMES)})]


class ModelOverrides(Strict):
    """params.yaml ``model``: which model, and the knobs every model shares (null: the file's)."""

    name: ModelName | None = Field(None, description="another model: knobs both share are kept, its own "
                                                      "take their defaults")
    embedding_dim: int | None = None
    hidden: list[int] | None = None
    tower: list[int] | None = None
    dropout: float | None = None
    loss: LossName | None = None
    regression_weight: float | None = None
    pwiser_weight: float | None = None
    embedding_l2: float | None = None
    numeric_buckets: int | None = None
    batch_norm: bool | None = None


class TrainOverrides(Strict):
    """params.yaml ``train`` (null: the file's)."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_schedule: Literal["constant", "cosine"] | None = None
    weight_decay: float | None = None
    patience: int | None = None
    seed: int | None = None


class GateOverrides(Strict):
    """params.yaml ``gate``: a list given replaces the file's list (an empty one drops its bounds)."""

    absolute: list[Bound] | None = None
    change: list[ChangeBound] | None = None


class Overrides(Strict):
    """What a deployment run may change over params.yaml, section by section."""

    model: ModelOverrides = ModelOverrides()
    train: TrainOverrides = TrainOverrides()
    gate: GateOverrides = GateOverrides()


def apply_overrides(params: Params, overrides: Overrides) -> Params:
    """``params`` with every set field of ``overrides`` replacing the file's value.

    Raises:
        flows.params.ParamsError: the merged params break the schema (one line per error).
    """
    sections: dict[str, dict[str, Any]] = overrides.model_dump(mode="json", exclude_none=True)
    name = sections["model"].get("name")
    if name in MODEL_NAMES and name != params.model.name:
        # The file's knobs of its own model (``experts`` of mmoe) would be unknown keys of another one.
        params = params.model_copy(update={"model": switch_model(params.model, name)})
    return with_overrides(params, {k: v for k, v in sections.items() if v})
