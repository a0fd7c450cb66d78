"""The repo's ASOF offline store returns what Feast's stock DuckDB store returns, row for row."""
import numpy as np
import pandas as pd
import pytest

from features import store
from features.contract import read_raw
from features.store import FeastPaths

pytestmark = pytest.mark.e2e
ASOF = "features.asof_offline_store.AsofDuckDBOfflineStore"


def _retrieve(paths, entity_df, offline_store):
    fs = store.open_store(FeastPaths(paths.feast, paths.features), offline_store)
    want = "AsofDuckDBOfflineStoreConfig" if offline_store == ASOF else "DuckDBOfflineStoreConfig"
    assert type(fs.config.offline_store).__name__ == want
    job = fs.get_historical_features(entity_df=entity_df, features=fs.get_feature_service("funnel_model_v1"),
                                     full_feature_names=True)
    df = job.to_df()
    df["event_timestamp"] = df["event_timestamp"].astype("datetime64[us, UTC]")
    return df


@pytest.fixture(scope="module")
def entities(pipeline_data):
    """Shuffled impressions (not in time or id order); half moved to midnight, the instant the activity
    rows are stamped, so the `<=` edge of the join is exercised."""
    imps = read_raw(pipeline_data.raw, "impressions").sample(3000, random_state=1)
    at_midnight = imps.head(1500).assign(event_timestamp=lambda d: d["event_timestamp"].dt.floor("D"))
    return pd.concat([at_midnight, imps.iloc[1500:]])


def test_same_rows_and_values_as_feasts_duckdb_store(pipeline_data, entities):
    ours = _retrieve(pipeline_data, entities, ASOF)
    stock = _retrieve(pipeline_data, entities, "duckdb")
    assert len(ours) == len(stock) == len(entities)
    stock = stock.set_index("impression_id").loc[ours["impression_id"]].reset_index()[ours.columns]
    pd.testing.assert_frame_equal(ours, stock, check_dtype=False)
    assert ours.filter(like="__").notna().any().all(), "every feature column is filled for some row"


def test_keeps_the_entity_order(pipeline_data, entities):
    ours = _retrieve(pipeline_data, entities, ASOF)
    np.testing.assert_array_equal(ours["impression_id"].to_numpy(), entities["impression_id"].to_numpy())


def test_rows_older_than_the_ttl_are_not_returned(pipeline_data, entities):
    """The views' TTL is 3650 days: impressions 11 years later see nothing, in both stores."""
    late = entities.head(200).assign(event_timestamp=entities["event_timestamp"].head(200) + pd.Timedelta(days=4000))
    for kind in (ASOF, "duckdb"):
        feats = _retrieve(pipeline_data, late, kind).filter(like="__")
        assert feats.isna().all().all(), kind
