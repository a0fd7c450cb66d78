"""What the pipeline prints: library noise silenced, expected failures as one line naming the fix.

``quiet()`` runs where a process enters the pipeline (the CLI's entry, the Prefect flow), not in every
module: the libraries under the steps are imported lazily and some reset the warning filters when they
are (Feast), so deprecation warnings are dropped where they are printed, as log records.
"""
from __future__ import annotations

import logging
import os
import re

from features.contract import ContractError, MissingInput, PartitionsQuarantined
from features.engines import SparkUnavailable
from features.store import OnlineStoreUnavailable
from features.validation import ValidationFailed
from flows.gate import CustodyError, GateFailed
from flows.lock import DataDirLocked
from flows.params import ParamsError
from flows.registry import RegistryError
from models.digest import ArtifactRefused

# Bad input, bad config or a step run out of order: the user fixes these, no traceback needed.
EXPECTED: tuple[type[Exception], ...] = (ContractError, MissingInput, ValidationFailed, GateFailed, RegistryError,
                                         ParamsError, PartitionsQuarantined, CustodyError, DataDirLocked,
                                         ArtifactRefused, OnlineStoreUnavailable, SparkUnavailable)

_LIBRARY_DEPRECATION = re.compile(r"[/\\](ibis|great_expectations)[/\\]\S*:\d+: DeprecationWarning:")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def quiet() -> None:
    """Silence the libraries' noise: deprecation warnings of ibis and GX, Prefect's telemetry (whose
    heartbeat fails on the busy ephemeral database with a traceback), GX's info lines, Feast's colour
    codes in Prefect's captured prints, and tracebacks of expected failures in Prefect's run logs.
    Safe to call twice."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # read when Prefect is imported
    logging.captureWarnings(True)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # This GX module sets its own logger to INFO when imported (after us): a filter outlives that.
    _add_filter("great_expectations.data_context.types.base", _WarningsOnly())
    _add_filter("py.warnings", _DropLibraryDeprecations())
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        _add_filter(name, _PlainRunLogs())


def one_line(exc: BaseException) -> str:
    """An expected failure's cause and what fixes it, on one line (a bad params.yaml: one line per error)."""
    if isinstance(exc, GateFailed):
        return exc.summary
    if isinstance(exc, (ParamsError, PartitionsQuarantined)):  # one line per error / per quarantined day
        return str(exc)
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, ValidationFailed):
        docs = next((f" ({line})" for line in lines if line.startswith("Data Docs:")), "")
        return f"{lines[0].lstrip('# ')}{docs}; fix the data, then rerun from `funnelflow ingest`"
    return " | ".join(lines)  # a ContractError's sample of offending rows stays on the line


def _add_filter(logger_name: str, new: logging.Filter) -> None:
    logger = logging.getLogger(logger_name)
    if not any(type(f) is type(new) for f in logger.filters):
        logger.addFilter(new)


class _WarningsOnly(logging.Filter):
    """Only warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _DropLibraryDeprecations(logging.Filter):
    """Drop captured deprecation warnings raised inside ibis and GX (nothing a user can act on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _LIBRARY_DEPRECATION.search(record.getMessage())


class _PlainRunLogs(logging.Filter):
    """Prefect's run logs without colour codes (Feast's prints) and, for an expected failure, one line
    instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, EXPECTED):
            record.msg, record.args, record.exc_info, record.exc_text = f"failed: {one_line(exc)}", (), None, None
        elif isinstance(record.msg, str):
            record.msg = _ANSI.sub("", record.msg)
        return True
