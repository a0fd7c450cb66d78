"""Feast objects of funnelflow: entities user and item, four feature views, one feature service.

The feature views read the tables written by ``features.engineering`` under
``$FUNNELFLOW_DATA_DIR/features``; their schemas are read from those Parquet files, so a user's own
profile columns (any int64 categorical / float64 numeric column, per the contract) flow through
without code changes. Paths are absolute: DuckDB resolves relative paths against the cwd.
"""
import os
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

DATA_DIR = Path(os.environ.get("FUNNELFLOW_DATA_DIR", Path(__file__).resolve().parents[2] / "data"))
TABLES = DATA_DIR / "features"
# Profiles and aggregates hold until superseded: the tables are already point-in-time stamped
# (see features/engineering.py), so the TTL only bounds how far back the join looks.
NO_EXPIRY = timedelta(days=3650)

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A person who sees impressions")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64,
              description="A thing shown in an impression")


def _schema(path: Path, key: str) -> list[Field]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `funnelflow features build` before `features apply`")
    fields = []
    for col in pq.read_schema(path):
        if col.name in (key, "event_timestamp"):
            continue
        fields.append(Field(name=col.name, dtype=Int64 if str(col.type).startswith("int") else Float64))
    return fields


def _view(name: str, entity: Entity, key: str, description: str) -> FeatureView:
    path = TABLES / f"{name}.parquet"
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=NO_EXPIRY,
        schema=_schema(path, key),
        source=FileSource(name=f"{name}_source", path=str(path), timestamp_field="event_timestamp"),
        online=True,
        description=description,
    )


user_profile = _view("user_profile", user, "user_id", "User profile snapshots, visible 1 us after they take effect")
item_profile = _view("item_profile", item, "item_id", "Item profile snapshots, visible 1 us after they take effect")
user_activity = _view("user_activity", user, "user_id",
                      "User impressions/steps/value over rolling windows, events strictly before the stamp")
item_activity = _view("item_activity", item, "item_id",
                      "Item impressions/steps/value over rolling windows, events strictly before the stamp")

funnel_model_v1 = FeatureService(
    name="funnel_model_v1",
    features=[user_profile, item_profile, user_activity, item_activity],
    description="Every feature the funnel models read",
)
