"""The feature-view registry: every feature view of the pipeline is one ``View`` entry of ``VIEWS``.

Everything else is derived from it:

- the feature tables: ``engineering.build_feature_tables`` builds each view's table and records every
  column's dtype, fill and bounds in ``tables.json``;
- the Feast objects: ``store.feast_objects`` makes the entities, one feature view per entry and the
  feature service named by ``features.feature_service`` (``store.apply`` registers them; the feast
  CLI's ``feature_repo/definitions.py`` shows the same objects);
- the training set's fill of missing history: ``training_set.FillPolicy``, from tables.json;
- the GX range checks: ``validation.build_suite``, from the bounds in the training-set manifest.

Adding a view is one entry here, or, without touching this module, ``VIEWS.with_view(View(...))``
passed to ``build_feature_tables`` and ``store.apply``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from features.engineering import (
    FULL,
    PER_DAY,
    ROLLING,
    Bounds,
    BuildInputs,
    Dtype,
    Refresh,
    activity_bounds,
    activity_fills,
    activity_table,
    no_bounds,
    profile_fills,
    profile_table,
)

Builder = Callable[[BuildInputs, str], pd.DataFrame]  # (inputs, join key) -> key, event_timestamp, features
FillRule = Callable[[dict[str, Dtype], BuildInputs], dict[str, str]]  # feature columns -> engineering fill
BoundsRule = Callable[[dict[str, Dtype], BuildInputs], dict[str, Bounds]]  # feature columns -> (min, max)


@dataclass(frozen=True)
class Entity:
    """A Feast entity: what a view's rows are about, and the impressions' column that joins them."""

    name: str
    key: str
    description: str


USER = Entity("user", "user_id", "A person who sees impressions")
ITEM = Entity("item", "item_id", "A thing shown in an impression")


@dataclass(frozen=True)
class View:
    """One feature view.

    Attributes:
        name: the Feast feature view, its table ``<name>.parquet`` and its training-set columns'
            prefix ``<name>__``.
        entity: whose rows; its key joins the view to the impressions.
        kind: ``profile`` (snapshots of attributes) or ``activity`` (aggregates of earlier events),
            shown as the Feast view's ``kind`` tag.
        build: writes the table, stamped so that Feast's ``<=`` join sees only rows strictly before t.
        fill: each feature column's fill where an entity has no row before t.
        bounds: each feature column's (min, max) that the GX suite checks; columns left out: none.
        description: the Feast view's description.
        refresh: what a new or replaced raw day recomputes (``engineering.Refresh``); the default,
            a full rebuild, is right for any builder, the others are faster for the ones they fit.
    """

    name: str
    entity: Entity
    kind: Literal["profile", "activity"]
    build: Builder
    fill: FillRule
    bounds: BoundsRule
    description: str
    refresh: Refresh = FULL


@dataclass(frozen=True)
class Views:
    """An ordered set of views with unique names; entities with the same name share one join key."""

    entries: tuple[View, ...]

    def __post_init__(self) -> None:
        names = [v.name for v in self.entries]
        if len(set(names)) != len(names):
            raise ValueError(f"feature view names must be unique: {names}")
        keys: dict[str, str] = {}
        for v in self.entries:
            if keys.setdefault(v.entity.name, v.entity.key) != v.entity.key:
                raise ValueError(f"entity {v.entity.name} has two join keys: {keys[v.entity.name]}, {v.entity.key}")

    def __iter__(self) -> Iterator[View]:
        return iter(self.entries)

    @property
    def entities(self) -> list[Entity]:
        """Each entity once, in the order the views name them."""
        return list({v.entity.name: v.entity for v in self.entries}.values())

    def with_view(self, view: View) -> Views:
        """These views plus ``view`` (a new registry; this one is unchanged)."""
        return Views((*self.entries, view))


VIEWS = Views((
    View("user_profile", USER, "profile", profile_table, profile_fills, no_bounds,
         "User profile snapshots, visible 1 us after they take effect", PER_DAY),
    View("item_profile", ITEM, "profile", profile_table, profile_fills, no_bounds,
         "Item profile snapshots, visible 1 us after they take effect", PER_DAY),
    View("user_activity", USER, "activity", activity_table, activity_fills, activity_bounds,
         "User impressions/steps/value over rolling windows, events strictly before the stamp", ROLLING),
    View("item_activity", ITEM, "activity", activity_table, activity_fills, activity_bounds,
         "Item impressions/steps/value over rolling windows, events strictly before the stamp", ROLLING),
))
