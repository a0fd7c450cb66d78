"""The Spark profile (params.yaml features.offline_store {kind: spark}): Feast's own Spark offline store
and Spark compute engine, selected in configuration, loading the same online values as the embedded
default; the default path never imports pyspark. (Point-in-time retrieval on Spark: test_point_in_time.)"""
import subprocess
import sys

import pandas as pd
import pytest

from features import store
from features.engines import DuckDBOffline, SparkOffline
from features.store import AppliedForAnotherEngine, FeastPaths
from features.views import VIEWS

SPARK = SparkOffline(kind="spark", master="local[2]", driver_memory="1g", shuffle_partitions=2)
SERVICE = "funnel_model_v1"


def test_spark_profile_selects_feasts_spark_store_and_engine(tmp_path):
    spark = store.repo_config(FeastPaths(tmp_path, tmp_path, offline=SPARK))
    assert type(spark.offline_store).__name__ == "SparkOfflineStoreConfig"
    assert type(spark.batch_engine).__name__ == "SparkComputeEngineConfig"
    conf = spark.offline_store.spark_conf
    assert conf == spark.batch_engine.spark_conf
    assert conf["spark.master"] == "local[2]" and conf["spark.driver.memory"] == "1g"
    assert conf["spark.ui.enabled"] == "false" and conf["spark.sql.session.timeZone"] == "UTC"
    default = store.repo_config(FeastPaths(tmp_path, tmp_path))
    assert default.offline_store.type == store.ASOF and default.batch_engine_config == "local"


@pytest.mark.e2e
def test_views_read_the_same_day_files_through_the_engines_source(pipeline_data):
    """One definition per view; only its source follows the engine (Spark's store reads Spark sources)."""
    def views(offline):
        return {o.name: o for o in store.feast_objects(pipeline_data.features, SERVICE, VIEWS, offline)
                if type(o).__name__ == "FeatureView"}

    duck, spark = views(DuckDBOffline()), views(SPARK)
    assert duck.keys() == spark.keys() == {v.name for v in VIEWS}
    for name, view in spark.items():
        assert type(view.batch_source).__name__ == "SparkSource"
        assert type(duck[name].batch_source).__name__ == "FileSource"
        assert view.batch_source.path == duck[name].batch_source.path
        assert view.features == duck[name].features and view.ttl == duck[name].ttl


@pytest.mark.e2e
def test_registry_applied_for_the_other_engine_is_refused_in_one_line(tmp_path, pipeline_data):
    on_duck = FeastPaths(tmp_path / "feast", pipeline_data.features)
    store.apply(on_duck, SERVICE, VIEWS)
    on_spark = FeastPaths(on_duck.feast, on_duck.tables, offline=SPARK)
    entities = pd.DataFrame({"impression_id": [1], "user_id": [1], "item_id": [1],
                             "event_timestamp": pd.to_datetime(["2026-01-01"], utc=True)})
    with pytest.raises(AppliedForAnotherEngine, match=r"offline_store \(spark\): run `funnelflow features apply"):
        next(store.historical_feature_batches(on_spark, entities, SERVICE))
    with pytest.raises(AppliedForAnotherEngine):
        store.materialize(on_spark)
    store.apply(on_spark, SERVICE, VIEWS)
    with pytest.raises(AppliedForAnotherEngine, match=r"\(duckdb\)"):
        next(store.historical_feature_batches(on_duck, entities, SERVICE))


@pytest.mark.e2e
def test_spark_engine_materializes_the_same_online_values(tmp_path, pipeline_data):
    """Feast's Spark compute engine loads the online store; every user/item pair reads back what the
    default engine loaded (pipeline_data, materialized on DuckDB)."""
    on_spark = FeastPaths(tmp_path / "feast", pipeline_data.features, offline=SPARK)
    store.apply(on_spark, SERVICE, VIEWS)
    assert type(store.open_store(on_spark).config.batch_engine).__name__ == "SparkComputeEngineConfig"
    assert set(store.materialize(on_spark)["modes"].values()) == {"full"}
    assert set(store.materialize(on_spark)["modes"].values()) == {"none"}, "a second load has nothing new"
    imps = pd.read_parquet(pipeline_data.training_set / "test.parquet")
    rows = imps[["user_id", "item_id"]].drop_duplicates().head(300).to_dict("records")
    online = []
    for paths in (FeastPaths(pipeline_data.feast, pipeline_data.features), on_spark):
        fs = store.open_store(paths, offline_store=store.ASOF)  # online reads: the offline store is not used
        online.append(fs.get_online_features(features=fs.get_feature_service(SERVICE), entity_rows=rows,
                                             full_feature_names=True).to_df())
    assert online[0].filter(like="__").notna().all().all()
    pd.testing.assert_frame_equal(online[1], online[0], check_exact=True)


@pytest.mark.e2e
def test_default_path_never_imports_pyspark(pipeline_data):
    """The embedded default (retrieval, materialization, the CLI) runs without loading pyspark."""
    code = (
        "import sys\n"
        "import pandas as pd\n"
        "import flows.cli\n"
        "from features import store\n"
        f"paths = store.FeastPaths({str(pipeline_data.feast)!r}, {str(pipeline_data.features)!r})\n"
        f"imps = pd.read_parquet({str(pipeline_data.training_set / 'test.parquet')!r}).head(50)\n"
        "cols = ['impression_id', 'user_id', 'item_id', 'event_timestamp']\n"
        f"assert len(next(store.historical_feature_batches(paths, imps[cols], {SERVICE!r}))) == 50\n"
        "store.materialize(paths)\n"
        "assert 'pyspark' not in sys.modules, 'pyspark imported'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
