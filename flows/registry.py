"""The champion registry: versioned release bundles and an atomically moved champion pointer.

Layout under the registry root::

    versions/v0001/   model.onnx, preprocess.json, bundle.json (the ONNX bundle), metrics.json,
                      blessing.json, manifest.json (training set, with data hash), params.yaml, release.json
    champion.json     {"version": "v0001", ...}   <- the only thing serving reads to find the champion
    history.jsonl     one line per promotion / rollback

A promotion builds the version folder under a temporary name (models/atomic.py), checks it loads and
scores, renames it into place, and only then replaces champion.json (written atomically). A crash at
any point leaves the previous champion.json, and the version folder it names, untouched.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.atomic import atomic_dir, write_json, write_text

POINTER = "champion.json"
HISTORY = "history.jsonl"
RELEASE = "release.json"


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no champion yet, an unknown version)."""


def git_commit(repo: Path) -> str | None:
    """HEAD of ``repo`` (``-dirty`` when tracked files changed), or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


class Registry:
    """Versions of released bundles under ``root`` and the pointer that names the champion."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions = self.root / "versions"

    # ---- reading -------------------------------------------------------------------------------
    def champion(self) -> dict | None:
        """The champion pointer, or None before the first promotion."""
        path = self.root / POINTER
        return json.loads(path.read_text()) if path.exists() else None

    def champion_dir(self) -> Path | None:
        """The champion's version folder, or None before the first promotion."""
        ptr = self.champion()
        return None if ptr is None else self.versions / ptr["version"]

    def champion_metrics(self) -> dict | None:
        """The test metrics recorded when the champion was promoted."""
        d = self.champion_dir()
        return None if d is None else json.loads((d / "metrics.json").read_text())

    def release(self, version: str) -> dict:
        """What a version was promoted from (model, data hash, commit, the champion it was judged against)."""
        return json.loads((self.versions / version / RELEASE).read_text())

    def list_versions(self) -> list[str]:
        """Version names, oldest first."""
        if not self.versions.exists():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and p.name.startswith("v"))

    def history(self) -> list[dict]:
        """Every promotion and rollback, oldest first."""
        path = self.root / HISTORY
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # ---- writing -------------------------------------------------------------------------------
    def _next_version(self) -> str:
        nums = [int(v[1:]) for v in self.list_versions() if v[1:].isdigit()]
        return f"v{(max(nums) + 1 if nums else 1):04d}"

    def _log(self, event: dict) -> None:
        """Add ``event`` to the history; the file is rewritten whole so a crash never leaves half a line."""
        lines = [json.dumps(e) for e in [*self.history(), event]]
        write_text(self.root / HISTORY, "\n".join(lines) + "\n")

    def _set_pointer(self, version: str, event: str, extra: dict | None = None) -> dict:
        ptr = {"version": version, "path": str(self.versions / version), "event": event,
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        write_json(self.root / POINTER, ptr)
        self._log(ptr)
        return ptr

    def promote(self, bundle_dir: Path, records: dict[str, Path], release: dict[str, Any],
                verify: Callable[[Path], None] | None = None) -> dict:
        """Copy the bundle and its records into a new version, verify it, then move the pointer.

        ``records`` maps file names in the version folder to source files (metrics, blessing, ...).
        ``verify(version_dir)`` must raise if the copied bundle cannot serve.
        """
        version = self._next_version()
        previous = self.champion()
        before = previous and previous["version"]
        with atomic_dir(self.versions / version) as staging:
            shutil.copytree(bundle_dir, staging, dirs_exist_ok=True)
            for name, src in records.items():
                shutil.copy2(src, staging / name)
            write_json(staging / RELEASE, {"version": version, "previous": before, **release})
            if verify is not None:
                verify(staging)
        return self._set_pointer(version, "promote", {"previous": before})

    def rollback(self, to: str | None = None) -> dict:
        """Point back at ``to`` (default: the champion before the current one)."""
        current = self.champion()
        if current is None:
            raise RegistryError("no champion to roll back from: promote one first (`funnelflow run`)")
        if to is None:
            earlier = [v for v in self.list_versions() if v < current["version"]]
            if not earlier:
                raise RegistryError(f"{current['version']} is the first version: nothing to roll back to")
            to = earlier[-1]
        if not (self.versions / to / "bundle.json").exists():
            raise RegistryError(f"version {to} does not exist in {self.versions} (known: "
                                f"{', '.join(self.list_versions())})")
        return self._set_pointer(to, "rollback", {"previous": current["version"]})
