"""The offline engine that params.yaml ``features.offline_store`` picks for Feast's heavy work.

``{kind: duckdb}`` (the default): the repo's ASOF DuckDB offline store in this process, and Feast's
local engine for materialization. ``{kind: spark, master: "local[2]", driver_memory: "2g"}``: Feast's
own Spark offline store (contrib ``spark``) for ``get_historical_features`` and Feast's Spark compute
engine (``spark.engine``) for materialization, on the same Parquet day files; the views' sources
become Feast ``SparkSource``s (features/store.py). Both engines return the same rows and values
(tests/features/test_point_in_time.py runs on both). Spark needs the ``spark`` extra
(``make spark-setup``: requirements-spark.txt) and Java 17+; nothing here imports pyspark, so the
default path never pays for it.
"""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Discriminator, PositiveInt, Tag, field_validator

from models.strict import Strict, kind_of

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class DuckDBOffline(Strict):
    """The embedded default: the repo's ASOF DuckDB offline store (features/asof_offline_store.py)."""

    kind: Literal["duckdb"] = "duckdb"


class SparkOffline(Strict):
    """Feast's Spark offline store and Spark compute engine on one Spark application.

    ``master`` is any Spark master URL: ``local[N]`` runs Spark inside this process's JVM on N cores
    (the tests use ``local[2]``); ``spark://HOST:7077``, ``yarn`` or ``k8s://...`` hand the work to a
    cluster whose executors can read the feature tables' folder (a shared file system or object store).
    """

    kind: Literal["spark"]
    master: str = "local[2]"
    driver_memory: str = "2g"  # the driver JVM's heap (the whole of Spark in local mode)
    shuffle_partitions: PositiveInt = 8  # Spark's default 200 is sized for clusters: tiny tasks here

    @field_validator("driver_memory")
    @classmethod
    def _jvm_size(cls, size: str) -> str:
        if not re.fullmatch(r"[1-9]\d*[kmgt]", size):
            raise ValueError(f"{size!r} is not a JVM size: write e.g. \"2g\" or \"512m\"")
        return size

    def spark_conf(self) -> dict[str, str]:
        """The Spark settings that Feast's store and engine start their session with."""
        return {
            "spark.master": self.master,
            "spark.app.name": "funnelflow-feast",
            "spark.driver.memory": self.driver_memory,
            "spark.sql.shuffle.partitions": str(self.shuffle_partitions),
            # Feast writes timestamps as UTC wall-clock strings into its SQL: the session must read them so.
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.execution.arrow.pyspark.enabled": "true",  # pandas <-> Spark in Arrow batches
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.log.level": "ERROR",
            **({"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"} if self.local else {}),
        }

    @property
    def local(self) -> bool:
        """Whether Spark runs inside this process's JVM (``local``, ``local[N]``, ``local[*]``)."""
        return self.master == "local" or self.master.startswith("local[")


class SparkUnavailable(RuntimeError):
    """params.yaml picks Spark, but Spark cannot start here: the message says what to install."""


def spark_session(cfg: SparkOffline) -> SparkSession:
    """The process's Spark session, started with ``cfg``'s settings unless one runs already (Spark has
    one per process; Feast's store and engine pick it up). In local mode its Python workers, which
    write materialized rows to the online store, run this interpreter, whose environment has Feast:
    PySpark would start whatever ``python3`` comes first on PATH. A cluster's executors use the
    interpreter the cluster configures (``spark.pyspark.python``).

    Raises:
        SparkUnavailable: pyspark is not installed, or its JVM does not start (no Java).
    """
    try:
        from pyspark import SparkConf
        from pyspark.errors import PySparkRuntimeError
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailable("params.yaml features.offline_store picks spark, but pyspark is not installed: run "
                               "`make spark-setup` (the spark extra) or pick {kind: duckdb}") from exc
    try:
        session = SparkSession.builder.config(conf=SparkConf().setAll(list(cfg.spark_conf().items()))).getOrCreate()
    except PySparkRuntimeError as exc:
        raise SparkUnavailable(f"Spark did not start ({exc.getCondition()}): it needs Java 17+ on PATH or "
                               "JAVA_HOME; or pick features.offline_store {kind: duckdb}") from exc
    if cfg.local:
        session.sparkContext.pythonExec = sys.executable
    return session


# Which engine runs the point-in-time join and materialization, picked by ``kind`` (models.strict.kind_of).
OfflineStore = Annotated[Annotated[DuckDBOffline, Tag("duckdb")] | Annotated[SparkOffline, Tag("spark")],
                         Discriminator(kind_of, custom_error_type="offline_store_kind",
                                       custom_error_message="a mapping whose kind is duckdb or spark: write "
                                                            "{kind: duckdb} or {kind: spark, master: \"local[2]\"}")]
