"""The one base of every typed config section: unknown keys are errors, values are frozen."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config model that rejects unknown keys (a typo in params.yaml fails at load) and is immutable
    (change a copy with ``model_copy(update=...)``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
