"""The task graph of the funnel: which label columns exist, their kind, and which task each depends on.

Pure Python (no torch) so the feature and validation code can import it cheaply.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from models.strict import Strict


class TaskSpec(Strict):
    """One task of the funnel. ``parent`` names the step that must be reached first (None = root)."""

    name: str = Field(pattern=r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")  # a label column name (features.contract)
    kind: Literal["binary", "regression"]
    parent: str | None = None

    @property
    def column(self) -> str:
        return self.name


class TaskGraph(Strict):
    """An ordered list of tasks; every parent must appear before its child."""

    tasks: list[TaskSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_order(self) -> TaskGraph:
        seen: dict[str, TaskSpec] = {}
        for t in self.tasks:
            if t.name in seen:
                raise ValueError(f"task {t.name!r} is listed twice")
            if t.parent is not None:
                if t.parent not in seen:
                    raise ValueError(f"task {t.name!r}: parent {t.parent!r} must be listed before it")
                if seen[t.parent].kind != "binary":
                    raise ValueError(f"task {t.name!r}: parent {t.parent!r} must be a binary task")
            seen[t.name] = t
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def get(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def ancestors(self, name: str) -> list[str]:
        """Parents of ``name`` from the root down (excluding ``name``)."""
        chain: list[str] = []
        parent = self.get(name).parent
        while parent is not None:
            chain.append(parent)
            parent = self.get(parent).parent
        return chain[::-1]

    @property
    def binary(self) -> list[TaskSpec]:
        return [t for t in self.tasks if t.kind == "binary"]

    @property
    def regression(self) -> list[TaskSpec]:
        return [t for t in self.tasks if t.kind == "regression"]


DEFAULT_FUNNEL = TaskGraph(
    tasks=[
        TaskSpec(name="click", kind="binary"),
        TaskSpec(name="conversion", kind="binary", parent="click"),
        TaskSpec(name="value", kind="regression", parent="conversion"),
    ]
)
