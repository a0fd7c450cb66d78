"""The console: library deprecation warnings dropped, Prefect run logs plain, expected failures on one line."""
import logging
import sys
import warnings

import pandas as pd
import pytest

from features.contract import ContractError, MissingInput
from flows.console import one_line, quiet
from flows.gate import GateFailed


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture()
def collect():
    quiet()
    handlers = {}

    def attach(name):
        handlers[name] = _Collect()
        logging.getLogger(name).addHandler(handlers[name])
        return handlers[name]

    yield attach
    for name, h in handlers.items():
        logging.getLogger(name).removeHandler(h)


def test_library_deprecations_are_dropped_even_after_a_library_resets_the_filters(collect):
    seen = collect("py.warnings")
    with warnings.catch_warnings():
        logging.captureWarnings(False)  # pytest records each test's warnings: start from plain Python
        quiet()
        warnings.simplefilter("once", DeprecationWarning)  # what importing Feast does
        warnings.warn_explicit("fetch_arrow_table() is deprecated", DeprecationWarning,
                               "/venv/site-packages/ibis/backends/duckdb/__init__.py", 332)
        warnings.warn_explicit("module 'sre_constants' is deprecated", DeprecationWarning,
                               "/venv/site-packages/great_expectations/datasource/x.py", 6)
        warnings.warn_explicit("ours is deprecated", DeprecationWarning, "/repo/flows/steps.py", 1)
    assert [r.getMessage().split(": ", 2)[-1].splitlines()[0] for r in seen.records] == ["ours is deprecated"]


def test_prefect_run_logs_lose_colour_codes_and_expected_tracebacks():
    quiet()
    logger = logging.getLogger("prefect.task_runs")

    def filtered(msg, args=(), exc_info=None):  # the logger's filters, without its (API) handlers
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, msg, args, exc_info)
        assert logger.filter(record)
        return record

    assert filtered("Materializing \x1b[1m\x1b[32m4\x1b[0m feature views").getMessage() == (
        "Materializing 4 feature views")
    try:
        raise MissingInput("/d/model/model.pt", "train")
    except MissingInput as exc:
        failed = filtered("Task run failed with exception: %r", (exc,), sys.exc_info())
    assert failed.exc_info is None and failed.getMessage() == (
        "failed: /d/model/model.pt is missing: run `funnelflow train` first")


def test_one_line_keeps_the_offending_rows_and_the_gate_summary():
    rows = pd.DataFrame({"impression_id": [17], "click": [0], "conversion": [1]})
    line = one_line(ContractError("imps.parquet", "conversion", "funnel rule", rows))
    assert "\n" not in line and "17" in line and line.startswith("imps.parquet: column 'conversion': funnel rule")
    assert one_line(GateFailed("## Gate: NOT BLESSED\n| table |", "refused: click/auc")) == "refused: click/auc"
