"""dvc.yaml's stages, the one record of what each step reads and writes.

The Prefect flow keys a task's cache on its stage's deps and params and re-runs it when an out is
gone; a step that finds an input missing names the command of the stage whose outs hold it.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from features.contract import require_input
from flows.params import REPO_ROOT, Paths

DATA_PREFIX = "data/"
REPORTS_PREFIX = "reports/"
CLI_PREFIX = "python -m flows.cli "


@cache
def stages() -> dict[str, dict[str, Any]]:
    """The stages of the repo's dvc.yaml, by name."""
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _names(entries: list[str | dict[str, Any]]) -> list[str]:
    """Paths of a deps/outs list, whose entries are a path or ``{path: options}``."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def deps(stage: str) -> list[str]:
    """The repo-relative deps of ``stage``."""
    return _names(stages()[stage].get("deps", []))


def outs(stage: str) -> list[str]:
    """Everything ``stage`` writes: its outs, metrics and plots."""
    spec = stages()[stage]
    return [p for kind in ("outs", "metrics", "plots") for p in _names(spec.get(kind, []))]


def resolve(rel: str, paths: Paths) -> Path:
    """A dvc.yaml path on this run's folders: ``data/...`` under the data dir, ``reports/...`` under its
    reports, the rest in the repo."""
    if rel.startswith(DATA_PREFIX):
        return paths.root / rel.removeprefix(DATA_PREFIX)
    if rel.startswith(REPORTS_PREFIX):
        return paths.reports / rel.removeprefix(REPORTS_PREFIX)
    return REPO_ROOT / rel


def command(stage: str) -> str:
    """The ``funnelflow`` subcommand a stage runs, without its options (``train``, ``features build``)."""
    words = stages()[stage]["cmd"].removeprefix(CLI_PREFIX).split()
    return " ".join(w for w in words if not w.startswith("-"))


def producer(path: Path, paths: Paths) -> str | None:
    """The stage whose outs hold ``path`` (the out itself or a folder above it), if any."""
    for stage in stages():
        for out in (resolve(o, paths) for o in outs(stage)):
            if path == out or out in path.parents:
                return stage
    return None


def require(paths: Paths, *files: Path) -> None:
    """``require_input`` on each of ``files``, naming the command of the stage that writes it (a step
    run out of order raises ``MissingInput``)."""
    for f in files:
        if not f.exists():
            stage = producer(f, paths)
            require_input(f, command(stage) if stage else "run")
