"""Great Expectations 1.x validation of the training set, with Data Docs and a readable summary.

The suite checks: schema and dtypes, null rates per feature, value ranges (ids, labels, and each
feature's bounds as its view declares them: ``features.views``, via the training-set manifest), label
rates inside configured bands, the funnel rules (no step without its parent), and drift: each
feature's distribution against the last *accepted* training set of the same data lineage, as GX's
KL-divergence expectation over the reference's quantile bins (numeric) or values (low-cardinality
integer features). A passing run makes the current set the next run's reference; a failing run never
does, unless its only failures are drift and the user accepts it (``accept_drift``: a reason, logged
in ``drift_log.jsonl``). A training set of another lineage (``funnelflow ingest DIR --new-lineage``)
has no reference: it is accepted as the new lineage's first one, and the change is logged.
"""
from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # KL(current || reference) over the reference's quantile bins: an 85%-by-time cut of the same data
    # measures <= 0.07, a dense feature scaled x3 >= 0.2 (docs/operations.md#drift, tests/features/test_drift.py).
    drift_max_kl: float = Field(0.1, gt=0)
    drift_bins: int = Field(10, ge=2)  # quantile bins of a numeric feature's reference distribution
    drift_max_categories: int = Field(50, ge=2)  # integer features with more values (ids) get no drift check
    # Share of the reference kept for values outside its range or unseen: without it one new value = inf.
    drift_tail_weight: float = Field(0.01, gt=0, lt=1)
    drift_features: tuple[str, ...] = ()  # empty: every feature


class ValidationFailed(RuntimeError):
    """The training set broke the suite; the message is the readable summary."""


DRIFT = "drift"  # the ``check`` meta of a drift expectation: the failures that --accept-drift may accept
REFERENCE, DRIFT_LOG = "reference.json", "drift_log.jsonl"
SITE = "funnelflow"  # the Data Docs site
ACCEPT_HINT = ("accept it with `funnelflow validate --accept-drift REASON`, or start a new lineage with "
               "`funnelflow ingest DIR --new-lineage REASON`")


@dataclass
class ValidationReport:
    """The outcome of a validation run: counts, failed expectations, drift reference, Data Docs."""

    success: bool
    evaluated: int
    failed: list[dict] = field(default_factory=list)
    drift_reference: str | None = None
    docs_index: str | None = None
    accepted_drift: str | None = None  # the reason a drift-only failure was accepted

    @property
    def drifted(self) -> list[str]:
        """Columns whose drift check failed."""
        return [f["column"] for f in self.failed if f.get("check") == DRIFT]

    def _drifted_names(self, most: int = 5) -> str:
        more = len(self.drifted) - most
        return ", ".join(self.drifted[:most]) + (f" and {more} more" if more > 0 else "")

    def to_markdown(self) -> str:
        """The readable summary: a headline and a table of the failed expectations."""
        head = "PASSED" if self.success else "FAILED"
        met = self.evaluated - len(self.failed)
        headline = f"## Training-set validation {head}: {met}/{self.evaluated} expectations met"
        if self.drifted and self.accepted_drift:
            headline += f"; drift in {self._drifted_names()} accepted: {self.accepted_drift}"
        elif self.drifted:
            headline += f"; drift in {self._drifted_names()} against the accepted reference: {ACCEPT_HINT}"
        lines = [headline, f"Drift reference: {self.drift_reference or 'none (first accepted training set)'}"]
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
    for col, partition in (reference or {}).get("partitions", {}).items():
        if col in schema:  # a column gone from the schema already fails the column-set check
            exps.append(gxe.ExpectColumnKLDivergenceToBeLessThan(
                column=col, partition_object=partition, threshold=cfg.drift_max_kl,
                tail_weight_holdout=cfg.drift_tail_weight, meta={"check": DRIFT}))
    return exps


def _failure_row(res) -> dict:
    cfg, r = res.expectation_config, res.result
    kw = cfg.kwargs
    expected = {k: v for k, v in kw.items()
                if k in ("min_value", "max_value", "value_set", "type_", "mostly", "threshold")}
    if "row_condition" in kw and kw["row_condition"] is not None:
        expected["where"] = str(kw["row_condition"])
    observed = r.get("observed_value", None)
    if observed is None and "unexpected_count" in r:
        observed = f"{r['unexpected_count']} rows ({r.get('unexpected_percent', 0):.3g}%) unexpected"
    check = (cfg.meta or {}).get("check")
    if observed is None and check == DRIFT:
        observed = "inf"  # GX reports an infinite divergence as no value
    if isinstance(observed, float):
        observed = round(observed, 6)
    row = {"expectation": cfg.type, "column": kw.get("column", "-"), "observed": observed,
           "expected": expected, "unexpected": (r.get("partial_unexpected_list") or [])[:5]}
    return {**row, "check": check} if check else row


def _context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context's default site writes to a random temp dir: publish to a known folder.
    ctx.add_data_docs_site(site_name=SITE, site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        # Validation pages only: a suite page re-renders every expectation (a drift check's chart costs
        # ~0.2 s), and the validation page already shows each with its result.
        "site_section_builders": {"expectations": "0", "profiling": "0"},  # type: ignore[typeddict-unknown-key]
    })
    return ctx


def numeric_partition(values: np.ndarray, bins: int) -> dict | None:
    """A GX continuous partition object of ``values``: edges at its quantiles (actual values, so no bin
    is empty; ties merge bins), weights as ``np.histogram`` (GX's pandas histogram) counts them. None
    for a constant column, which no histogram can describe.

    A value holding more than one bin's share (the zeros of a sparse count) would merge most bins into
    one and hide a change of the rest: the rest then gets its own quantile edges."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    qs = np.linspace(0.0, 1.0, bins + 1)
    edges = np.quantile(values, qs, method="lower")
    top, count = _mode(values)
    if count * bins > len(values) and count < len(values):
        edges = np.concatenate([edges, np.quantile(values[values != top], qs, method="lower")])
    edges = np.unique(edges)
    if len(edges) < 2:
        return None
    counts, _ = np.histogram(values, edges)
    return {"bins": edges.tolist(), "weights": (counts / counts.sum()).tolist()}


def _mode(values: np.ndarray) -> tuple[float, int]:
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[counts.argmax()]), int(counts.max())


def categorical_partition(values: pd.Series, max_categories: int) -> dict | None:
    """A GX categorical partition object (values and their shares); None above ``max_categories``
    values (ids, whose shares say nothing about drift)."""
    shares = values.value_counts(normalize=True, dropna=True).sort_index()
    if len(shares) > max_categories:
        return None
    return {"values": [int(v) for v in shares.index], "weights": shares.tolist()}


def reference_partitions(df: pd.DataFrame, tasks: TaskGraph, cfg: ValidationConfig) -> dict[str, dict]:
    """Each drift-checked feature's distribution as a GX partition object: the next run's reference."""
    cats, nums = feature_columns(df, tasks)
    keep = set(cfg.drift_features) if cfg.drift_features else None
    parts = {c: numeric_partition(df[c].to_numpy(np.float64), cfg.drift_bins) for c in nums}
    parts |= {c: categorical_partition(df[c], cfg.drift_max_categories) for c in cats}
    return {c: p for c, p in parts.items() if p is not None and (keep is None or c in keep)}


def _group_of(expectation, tasks: TaskGraph) -> str:
    """Which narrow batch an expectation runs on: 'table' (row count, column set), 'labels' (ids,
    timestamps, labels, funnel rules), 'drift' (the drift checks), or the Feast view / 'context' its
    column belongs to."""
    col = getattr(expectation, "column", None)
    if col is None:
        return "table"
    if (expectation.meta or {}).get("check") == DRIFT:
        return DRIFT
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
    each Feast view, the context columns, the drift checks), each on a frame of only its columns: GX's
    pandas engine copies its whole batch to filter rows for each column check, which at 10M impressions
    x 57 columns went past 20 GB; on narrow batches a copy is a few columns."""
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
    from great_expectations.checkpoint import UpdateDataDocsAction, ValidationAction

    source = ctx.data_sources.add_pandas("training_set")
    results, success = [], True
    for group, exps in groups.items():
        name = f"training_set.{group}"
        batch_def = source.add_dataframe_asset(group).add_batch_definition_whole_dataframe("whole")
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=exps))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        # A drift check's page draws two histograms (~0.1 s each, as much as the rest of the suite's
        # docs together): drift pages are built only when one fails, where they help.
        docs: list[ValidationAction] = [] if group == DRIFT else [UpdateDataDocsAction(name="docs", site_names=[SITE])]
        cp = ctx.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vd], actions=docs,
                                               result_format={"result_format": "SUMMARY"}))
        columns = [e.column for e in exps] if group == DRIFT else _group_columns(group, df, tasks)
        frame = df if group == "table" else df[columns]
        result = cp.run(batch_parameters={"dataframe": frame})
        del frame
        _drop_cached_batches(source)
        if not docs and not result.success:
            ctx.build_data_docs(site_names=[SITE], resource_identifiers=list(result.run_results))
        success &= result.success
        results += [r for vr in result.run_results.values() for r in vr.results]
    return success, results


def read_training_set(training_set_dir: Path) -> pd.DataFrame:
    """All splits as one frame, read once (no concat copy of the whole set)."""
    return read_frame(*(require_input(training_set_dir / f"{s}.parquet", "training-set") for s in SPLITS))


def validate_training_set(training_set_dir: Path | str, out_dir: Path | str, tasks: TaskGraph,
                          cfg: ValidationConfig, raise_on_failure: bool = True,
                          accept_drift: str | None = None) -> ValidationReport:
    """Validate all splits together against the reference of their lineage; write summary.json/.md.

    An accepted set (passing, or failing on drift alone with ``accept_drift``: the reason) becomes the
    reference; accepted drift and a change of lineage are appended to ``drift_log.jsonl``."""
    training_set_dir, out_dir = Path(training_set_dir), Path(out_dir)
    manifest = json.loads(require_input(training_set_dir / MANIFEST, "training-set").read_text())
    lineage = manifest.get("lineage") or "default"
    df = read_training_set(training_set_dir)
    stored = read_reference(out_dir)
    reference = stored if stored is not None and stored.get("lineage") == lineage else None
    report = validate_frame(df, tasks, cfg, out_dir, manifest["schema"], manifest["bounds"], reference)
    if reference is not None:
        report.drift_reference = f"lineage {lineage}, training set {reference.get('data_hash')}"
    only_drift = bool(report.failed) and len(report.drifted) == len(report.failed)
    if accept_drift and only_drift:
        report.success, report.accepted_drift = True, accept_drift
    _write_summary(out_dir, report)
    if not report.success:
        if raise_on_failure:
            raise ValidationFailed(report.to_markdown())
        return report
    entry = {"lineage": lineage, "data_hash": manifest.get("data_hash")}
    if report.accepted_drift:
        _log(out_dir, {"event": "accept_drift", "reason": report.accepted_drift, **entry,
                       "reference_data_hash": reference and reference.get("data_hash"),
                       "failed": [{"column": f["column"], "kl": f["observed"]} for f in report.failed]})
    elif reference is None:  # the first accepted set of a lineage (the very first one included)
        before = stored or {}
        _log(out_dir, {"event": "new_lineage", **entry, "previous_lineage": before.get("lineage"),
                       "previous_data_hash": before.get("data_hash")})
    write_json(out_dir / REFERENCE, {**entry, "accepted_at": _now(),
                                     "partitions": reference_partitions(df, tasks, cfg)})
    return report


def read_reference(out_dir: Path | str) -> dict | None:
    """The stored drift reference, if any (one of the mean-only format before lineages has none)."""
    path = Path(out_dir) / REFERENCE
    ref = json.loads(path.read_text()) if path.exists() else None
    return ref if ref is not None and "partitions" in ref else None


def read_drift_log(out_dir: Path | str) -> list[dict]:
    """Every accepted drift and change of lineage, oldest first."""
    path = Path(out_dir) / DRIFT_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _write_summary(out_dir: Path, report: ValidationReport) -> None:
    summary = {"success": report.success, "evaluated": report.evaluated, "failed": report.failed,
               "drifted": report.drifted, "accepted_drift": report.accepted_drift,
               "drift_reference": report.drift_reference, "docs_index": report.docs_index}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    write_text(out_dir / "summary.md", report.to_markdown())


def _log(out_dir: Path, entry: dict) -> None:
    """Append one record, with when and by whom, to the drift log (rewritten whole: atomic, and small)."""
    path = out_dir / DRIFT_LOG
    old = path.read_text() if path.exists() else ""
    record = {"at": _now(), "by": f"{getpass.getuser()}@{socket.gethostname()}", **entry}
    write_text(path, old + json.dumps(record, default=str) + "\n")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
