"""The pipeline's steps: one function each, called by the CLI (hence by DVC stages) and by the Prefect flow.

Every step reads ``params.yaml`` sections through ``Params`` and its inputs from ``Paths``, writes its
outputs atomically, and returns a small JSON-able summary (what it wrote, counts, timings).
"""
from __future__ import annotations

import json
import logging
import time
from functools import wraps
from pathlib import Path

from flows.params import Params, Paths

log = logging.getLogger("funnelflow")


def timed(fn):
    """Log the step's start and end and add ``seconds`` to its summary."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        log.info("step %s: start", fn.__name__)
        out = fn(*args, **kwargs) or {}
        out["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("step %s: done in %.1fs", fn.__name__, out["seconds"])
        return out

    return wrapper


@timed
def generate(params: Params, paths: Paths, out: Path | None = None, oracle_out: Path | None = None) -> dict:
    """Synthetic funnel data in the contract layout; the oracle goes to a separate file."""
    from features.contract import FunnelDataset, write_dataset
    from features.generate import generate as gen

    g = params.generate
    data = gen(rows=g.rows, days=g.days, seed=g.seed, users=g.users, items=g.items, start=g.start)
    out = Path(out or paths.generated)
    summary = write_dataset(FunnelDataset(data.impressions, data.users, data.items), out,
                            extra={"generator": g.model_dump()})
    oracle_out = Path(oracle_out or paths.oracle)
    oracle_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = oracle_out.with_suffix(".tmp")
    data.oracle.to_parquet(tmp, index=False)
    tmp.replace(oracle_out)
    return {"out": str(out), "oracle": str(oracle_out), **summary}


@timed
def ingest(params: Params, paths: Paths, source: Path | None = None, fmt: str | None = None) -> dict:
    """Check a dataset against the contract and store it as the raw snapshot (all or nothing)."""
    from features.contract import ingest as ingest_dataset

    fmt = fmt or params.data.format
    if source is None:
        source = paths.generated if params.data.source == "generate" else Path(params.data.source)
    if fmt != "funnel":
        from features.adapters import convert  # public-dataset layouts -> the contract

        return convert(fmt, Path(source), paths.raw, params.task_graph)
    return ingest_dataset(source, paths.raw, params.task_graph)


@timed
def build_features(params: Params, paths: Paths) -> dict:
    """Profile and rolling-aggregate tables (the Feast feature views' sources)."""
    from features.engineering import build_feature_tables

    return build_feature_tables(paths.raw, paths.features, params.task_graph, params.features)


@timed
def features_apply(params: Params, paths: Paths) -> dict:
    from features import store

    return {"applied": store.apply(paths.root)}


@timed
def features_materialize(params: Params, paths: Paths) -> dict:
    from features import store

    summary = store.materialize(paths.root)
    (paths.root / "feast" / "materialized.json").write_text(json.dumps(summary, indent=2))
    return summary


@timed
def training_set(params: Params, paths: Paths) -> dict:
    from features.training_set import build_training_set

    manifest = build_training_set(paths.root, params.task_graph, params.features, params.split, paths.training_set)
    return {"splits": {k: v["rows"] for k, v in manifest["splits"].items()}, "data_hash": manifest["data_hash"]}


@timed
def validate(params: Params, paths: Paths, raise_on_failure: bool = True) -> dict:
    from features.validation import validate_training_set

    report = validate_training_set(paths.training_set, paths.validation, params.task_graph, params.validation,
                                   raise_on_failure=raise_on_failure)
    return {"success": report.success, "evaluated": report.evaluated, "failed": len(report.failed),
            "summary": str(paths.validation / "summary.md"), "docs": report.docs_index}
