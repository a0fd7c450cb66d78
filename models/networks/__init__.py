"""The model registry: every network and its config, keyed by ``model.name``.

A model is one module in this package that defines its config (a ``ModelConfigBase`` subclass with
``name: Literal["<module>"]`` and the model's own knobs), its network (a ``FunnelNet`` subclass whose
``config_class`` is that config) and ``NETWORK = <the network class>``. Its entry in ``MODEL_NAMES``
makes it a valid ``model.name``, a member of the ``ModelConfig`` union, and part of every benchmark
list and test parametrisation. Layers shared by the networks are in ``layers``, their base in ``base``.
"""
from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag, TypeAdapter

from models.config import ModelConfigBase
from models.networks.base import FunnelNet, chain_outputs, prediction_columns
from models.tasks import TaskGraph

__all__ = ["DEFAULT_MODEL", "MODELS", "MODEL_NAMES", "FunnelNet", "ModelConfig", "build_model", "chain_outputs",
           "parse_model_config", "prediction_columns", "switch_model"]

# One entry per model module, in the order tables and benchmarks list them.
MODEL_NAMES = ("shared_bottom", "mmoe", "ple", "esmm", "aitm", "tafe", "htlnet")
DEFAULT_MODEL = "tafe"  # the model of a config that names none, as params.yaml (docs/benchmarks.md)

MODELS: dict[str, type[FunnelNet]] = {name: import_module(f"{__name__}.{name}").NETWORK for name in MODEL_NAMES}


def _model_name(value: Any) -> str:
    """The union's tag: ``name`` of a raw section (``DEFAULT_MODEL`` when absent) or of a config."""
    return value.get("name", DEFAULT_MODEL) if isinstance(value, Mapping) else value.name


# Any model's config: parsing picks the member by ``name``, so a knob of another model is an error.
if TYPE_CHECKING:  # a union built at runtime is no static type: type checkers see the shared base
    ModelConfig = ModelConfigBase
else:
    ModelConfig = Annotated[
        Union[tuple(Annotated[net.config_class, Tag(name)] for name, net in MODELS.items())],  # noqa: UP007
        Discriminator(_model_name, custom_error_type="model_name",
                      custom_error_message=f"name must be one of: {', '.join(MODEL_NAMES)}"),
    ]

_ADAPTER: TypeAdapter[ModelConfig] = TypeAdapter(ModelConfig)


def parse_model_config(raw: Mapping[str, Any]) -> ModelConfig:
    """params.yaml's ``model`` section (a dict) -> the config of the model it names."""
    return _ADAPTER.validate_python(raw)


def switch_model(cfg: ModelConfig, name: str) -> ModelConfig:
    """``cfg`` for model ``name``: every knob both models have is kept (the shared ones; ``experts``
    between mmoe and ple), ``name``'s other knobs take their defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODEL_NAMES)}")
    fields = MODELS[name].config_class.model_fields
    return parse_model_config({k: v for k, v in cfg.model_dump().items() if k in fields} | {"name": name})


def build_model(tasks: TaskGraph, cardinalities: list[int], n_numeric: int, cfg: ModelConfig) -> FunnelNet:
    """The network ``cfg`` names, for ``tasks`` and the given input sizes."""
    return MODELS[cfg.name](tasks, cardinalities, n_numeric, cfg)
