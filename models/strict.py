"""The one base of every typed config section: unknown keys are errors, values are frozen."""
from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """A config model that rejects unknown keys (a typo in params.yaml fails at load) and is immutable
    (change a copy with ``model_copy(update=...)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _true_is_not_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false only where a field is a bool: pydantic would read ``epochs: true`` as 1."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation) and annotation is not Any:
                raise PydanticCustomError("bool_not_allowed", "true/false given where a bool is not accepted: "
                                                              "write a value of the field's type")
        return value


def kind_of(value: object) -> object:
    """The ``kind`` of a mapping or a config: the callable discriminator of a Strict union picked by
    ``kind`` (Strict's before-validator on every field rules out pydantic's field discriminator)."""
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
