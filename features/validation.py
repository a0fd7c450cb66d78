"""Great Expectations 1.x validation of the training set, with Data Docs and a readable summary.

The suite checks: schema and dtypes, null rates per feature, value ranges (ids, labels, and each
feature's bounds as its view declares them: ``features.views``, via the training-set manifest), label
rates inside configured bands, the funnel rules (no step without its parent), and drift of feature
means against the previous *accepted* training set (skipped on the first run). A passing run records
the current means as the next run's reference; a failing run never does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from features.contract import require_input
from features.training_set import MANIFEST, SPLITS, read_frame
from models.atomic import atomic_dir, write_json, write_text
from models.strict import Strict
from models.tasks import TaskGraph

Bounds = dict[str, list[float | None]]  # {column: [min, max]}, None: unchecked (the manifest's "bounds")


class ValidationConfig(Strict):
    """The ``validation`` section of params.yaml."""

    max_null_fraction: float = 0.0  # after the training-set step fills missing history, no nulls remain
    label_rate_bands: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"click": (0.005, 0.5), "conversion": (0.0002, 0.2)})
    drift_max_shift_std: float = 0.5
    drift_features: tuple[str, ...] = ()  # empty: every numeric feature


class ValidationFailed(RuntimeError):
    """The training set broke the suite; the message is the readable summary."""


@dataclass
class ValidationReport:
    """The outcome of a validation run: counts, failed expectations, drift reference, Data Docs."""

    success: bool
    evaluated: int
    failed: list[dict] = field(default_factory=list)
    drift_reference: str | None = None
    docs_index: str | None = None

    def to_markdown(self) -> str:
        """The readable summary: a headline and a table of the failed expectations."""
        head = "PASSED" if self.success else "FAILED"
        met = self.evaluated - len(self.failed)
        lines = [f"## Training-set validation {head}: {met}/{self.evaluated} expectations met",
                 f"Drift reference: {self.drift_reference or 'none (first accepted training set)'}"]
        if self.failed:
            lines += ["", "| expectation | column | observed | expected | sample of unexpected |",
                      "|---|---|---|---|---|"]
            for f in self.failed:
                cells = (f["expectation"], f["column"], f["observed"], f["expected"], f["unexpected"])
                lines.append("| " + " | ".join(map(str, cells)) + " |")
        if self.docs_index:
            lines += ["", f"Data Docs: {self.docs_index}"]
        return "\n".join(lines)


def feature_columns(df: pd.DataFrame, tasks: TaskGraph) -> tuple[list[str], list[str]]:
    """(categorical, numeric) feature columns of a training-set frame, by dtype (the contract's rule)."""
    skip = {"impression_id", "event_timestamp", *tasks.names}
    cats = [c for c in df.columns if c not in skip and pd.api.types.is_integer_dtype(df[c])]
    nums = [c for c in df.columns if c not in skip and pd.api.types.is_float_dtype(df[c])]
    return cats, nums


def build_suite(schema: dict[str, str], bounds: Bounds, tasks: TaskGraph, cfg: ValidationConfig,
                reference: dict | None) -> list:
    """The expectation list for a frame of this declared schema ({column: dtype}) and feature bounds."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    skip = {"impression_id", "event_timestamp", *tasks.names}
    cats = [c for c, t in schema.items() if c not in skip and t.startswith("int")]
    nums = [c for c, t in schema.items() if c not in skip and t.startswith("float")]
    exps = [gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectTableColumnsToMatchSet(column_set=list(schema), exact_match=True),
            gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp")]
    for col in cats:
        exps.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_="int64"))
        exps.append(gxe.ExpectColumnMinToBeBetween(column=col, min_value=-1))  # -1 = unknown id
    for col in nums:
        exps.append(gxe.ExpectColumnValuesToBeOfType(column=col, type_="float64"))
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=1.0 - cfg.max_null_fraction))
    for col, (lo, hi) in bounds.items():  # as min/max aggregates: row-wise map checks cost ~2 s per 1M rows
        if lo is not None:
            exps.append(gxe.ExpectColumnMinToBeBetween(column=col, min_value=lo))
        if hi is not None:
            exps.append(gxe.ExpectColumnMaxToBeBetween(column=col, max_value=hi))
    for t in tasks.tasks:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=t.column))
        if t.kind == "binary":
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=t.column, value_set=[0, 1]))
            if t.name in cfg.label_rate_bands:
                lo, hi = cfg.label_rate_bands[t.name]
                exps.append(gxe.ExpectColumnMeanToBeBetween(column=t.column, min_value=lo, max_value=hi))
        else:
            exps.append(gxe.ExpectColumnMinToBeBetween(column=t.column, min_value=0.0))
        if t.parent is not None:  # funnel rule: nothing positive where the parent step was not reached
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=t.column, min_value=0, max_value=0,
                                                          row_condition=(Column(t.parent) == 0)))
    for col, stats in (reference or {}).get("means", {}).items():
        if col in schema and (not cfg.drift_features or col in cfg.drift_features):
            band = cfg.drift_max_shift_std * max(stats["std"], 1e-9)
            exps.append(gxe.ExpectColumnMeanToBeBetween(column=col, min_value=stats["mean"] - band,
                                                        max_value=stats["mean"] + band,
                                                        meta={"check": "drift"}))
    return exps


def _failure_row(res) -> dict:
    cfg, r = res.expectation_config, res.result
    kw = cfg.kwargs
    expected = {k: v for k, v in kw.items() if k in ("min_value", "max_value", "value_set", "type_", "mostly")}
    if "row_condition" in kw and kw["row_condition"] is not None:
        expected["where"] = str(kw["row_condition"])
    observed = r.get("observed_value", None)
    if observed is None and "unexpected_count" in r:
        observed = f"{r['unexpected_count']} rows ({r.get('unexpected_percent', 0):.3g}%) unexpected"
    if isinstance(observed, float):
        observed = round(observed, 6)
    return {"expectation": cfg.type, "column": kw.get("column", "-"), "observed": observed,
            "expected": expected, "unexpected": (r.get("partial_unexpected_list") or [])[:5]}


def _context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context's default site writes to a random temp dir: publish to a known folder.
    ctx.add_data_docs_site(site_name="funnelflow", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
    })
    return ctx


def reference_stats(df: pd.DataFrame, tasks: TaskGraph) -> dict:
    """Mean and std of every numeric feature: the next run's drift reference."""
    _, nums = feature_columns(df, tasks)
    return {"means": {c: {"mean": float(np.nanmean(df[c])), "std": float(np.nanstd(df[c]))} for c in nums}}


def _group_of(expectation, tasks: TaskGraph) -> str:
    """Which narrow batch an expectation runs on: 'table' (row count, column set), 'labels' (ids,
    timestamps, labels, funnel rules), or the Feast view / 'context' its column belongs to."""
    col = getattr(expectation, "column", None)
    if col is None:
        return "table"
    if col in ("impression_id", "event_timestamp", *tasks.names):
        return "labels"
    return col.split("__", 1)[0] if "__" in col else "context"


def _group_columns(group: str, df: pd.DataFrame, tasks: TaskGraph) -> list[str]:
    if group == "labels":
        return [c for c in ("impression_id", "event_timestamp", *tasks.names) if c in df.columns]
    if group == "context":
        return [c for c in df.columns if "__" not in c and c not in ("impression_id", "event_timestamp", *tasks.names)]
    return [c for c in df.columns if c.startswith(f"{group}__")]


def _drop_cached_batches(source) -> None:
    """GX's pandas engine keeps every batch it has loaded (frame included) for the context's life:
    without this each group's narrow frame stayed in memory (10M impressions: 6.6 -> 11.9 GB)."""
    manager = source.get_execution_engine().batch_manager
    manager.reset_batch_cache()
    manager.batch_data_cache.clear()


def validate_frame(df: pd.DataFrame, tasks: TaskGraph, cfg: ValidationConfig, out_dir: Path | str,
                   schema: dict[str, str], bounds: Bounds, reference: dict | None = None) -> ValidationReport:
    """Run the suite through GX checkpoints (which also build Data Docs under out_dir/data_docs).

    ``schema`` is the declared {column: dtype} and ``bounds`` the declared {column: [min, max]} (the
    training-set manifest's, from the feature views), never read off ``df`` itself, so a column of the
    wrong type fails instead of being re-declared.

    The suite runs as one checkpoint per column group (``training_set.<group>``: the table, the labels,
    each Feast view, the context columns), each on a frame of only its columns: GX's pandas engine
    copies its whole batch to filter rows for each column check, which at 10M impressions x 57 columns
    went past 20 GB; on narrow batches a copy is a few columns."""
    groups: dict[str, list] = {}
    for e in build_suite(schema, bounds, tasks, cfg, reference):
        groups.setdefault(_group_of(e, tasks), []).append(e)
    docs_dir = (Path(out_dir) / "data_docs").resolve()
    with atomic_dir(docs_dir) as tmp:  # the previous run's docs stay until these are complete
        success, results = _run_groups(df, groups, tasks, _context(tmp))
        has_index = (tmp / "index.html").exists()
    failed = [_failure_row(r) for r in results if not r.success]
    return ValidationReport(success=success, evaluated=len(results), failed=failed,
                            docs_index=str(docs_dir / "index.html") if has_index else None)


def _run_groups(df: pd.DataFrame, groups: dict[str, list], tasks: TaskGraph, ctx) -> tuple[bool, list]:
    """One checkpoint per column group, each on a frame of its columns only; (success, results)."""
    import great_expectations as gx

    source = ctx.data_sources.add_pandas("training_set")
    results, success = [], True
    for group, exps in groups.items():
        name = f"training_set.{group}"
        batch_def = source.add_dataframe_asset(group).add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=exps))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        cp = ctx.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["funnelflow"])],
            result_format={"result_format": "SUMMARY"}))
        frame = df if group == "table" else df[_group_columns(group, df, tasks)]
        result = cp.run(batch_parameters={"dataframe": frame})
        del frame
        _drop_cached_batches(source)
        success &= result.success
        results += [r for vr in result.run_results.values() for r in vr.results]
    return success, results


def read_training_set(training_set_dir: Path) -> pd.DataFrame:
    """All splits as one frame, read once (no concat copy of the whole set)."""
    return read_frame(*(require_input(training_set_dir / f"{s}.parquet", "training-set") for s in SPLITS))


def validate_training_set(training_set_dir: Path | str, out_dir: Path | str, tasks: TaskGraph,
                          cfg: ValidationConfig, raise_on_failure: bool = True) -> ValidationReport:
    """Validate all splits together; write summary.json/.md; on success make these means the reference."""
    training_set_dir, out_dir = Path(training_set_dir), Path(out_dir)
    manifest = json.loads(require_input(training_set_dir / MANIFEST, "training-set").read_text())
    df = read_training_set(training_set_dir)
    ref_path = out_dir / "reference.json"
    reference = json.loads(ref_path.read_text()) if ref_path.exists() else None
    report = validate_frame(df, tasks, cfg, out_dir, manifest["schema"], manifest["bounds"], reference)
    if reference is not None:
        report.drift_reference = reference.get("data_hash", str(ref_path))
    summary = {"success": report.success, "evaluated": report.evaluated, "failed": report.failed,
               "drift_reference": report.drift_reference, "docs_index": report.docs_index}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    write_text(out_dir / "summary.md", report.to_markdown())
    if report.success:
        write_json(ref_path, {"data_hash": manifest.get("data_hash"), **reference_stats(df, tasks)})
    elif raise_on_failure:
        raise ValidationFailed(report.to_markdown())
    return report
