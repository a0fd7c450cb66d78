"""The champion registry: versioned release bundles and an atomically moved champion pointer.

Layout under the registry root::

    versions/v0001/   model.onnx, preprocess.json, bundle.json (the ONNX bundle), metrics.json,
                      blessing.json, manifest.json (training set, with data hash), params.yaml, release.json
    champion.json     {"version": "v0001", ...}   <- the only thing serving reads to find the champion
    history.jsonl     one line per promotion / rollback

A promotion builds the version folder under a temporary name, checks it loads and scores, renames it
into place, and only then replaces champion.json (write temp + os.replace, atomic on POSIX). A crash
at any point leaves the previous champion.json, and the version folder it names, untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

POINTER = "champion.json"
HISTORY = "history.jsonl"


class RegistryError(RuntimeError):
    pass


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON to a temp file beside ``path``, fsync, then os.replace: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Registry:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions = self.root / "versions"

    # ---- reading -------------------------------------------------------------------------------
    def champion(self) -> dict | None:
        path = self.root / POINTER
        return json.loads(path.read_text()) if path.exists() else None

    def champion_dir(self) -> Path | None:
        ptr = self.champion()
        return None if ptr is None else self.versions / ptr["version"]

    def champion_metrics(self) -> dict | None:
        d = self.champion_dir()
        return None if d is None else json.loads((d / "metrics.json").read_text())

    def list_versions(self) -> list[str]:
        if not self.versions.exists():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and p.name.startswith("v"))

    def history(self) -> list[dict]:
        path = self.root / HISTORY
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # ---- writing -------------------------------------------------------------------------------
    def _next_version(self) -> str:
        nums = [int(v[1:]) for v in self.list_versions() if v[1:].isdigit()]
        return f"v{(max(nums) + 1 if nums else 1):04d}"

    def _log(self, event: dict) -> None:
        with open(self.root / HISTORY, "a") as f:
            f.write(json.dumps(event) + "\n")

    def _set_pointer(self, version: str, event: str, extra: dict | None = None) -> dict:
        ptr = {"version": version, "path": str(self.versions / version), "event": event,
               "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        write_json_atomic(self.root / POINTER, ptr)
        self._log(ptr)
        return ptr

    def promote(self, bundle_dir: Path, records: dict[str, Path], release: dict, verify=None) -> dict:
        """Copy the bundle and its records into a new version, verify it, then move the pointer.

        ``records`` maps file names in the version folder to source files (metrics, blessing, ...).
        ``verify(version_dir)`` must raise if the copied bundle cannot serve.
        """
        self.versions.mkdir(parents=True, exist_ok=True)
        version = self._next_version()
        staging = self.versions / f".staging-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(bundle_dir, staging)
            for name, src in records.items():
                shutil.copy2(src, staging / name)
            previous = self.champion()
            write_json_atomic(staging / "release.json", {"version": version, "previous": previous and previous["version"],
                                                    **release})
            if verify is not None:
                verify(staging)
            os.replace(staging, self.versions / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self._set_pointer(version, "promote", {"previous": previous and previous["version"]})

    def rollback(self, to: str | None = None) -> dict:
        """Point back at ``to`` (default: the champion before the current one)."""
        current = self.champion()
        if current is None:
            raise RegistryError("no champion to roll back from")
        if to is None:
            earlier = [v for v in self.list_versions() if v < current["version"]]
            if not earlier:
                raise RegistryError(f"{current['version']} is the first version: nothing to roll back to")
            to = earlier[-1]
        if not (self.versions / to / "bundle.json").exists():
            raise RegistryError(f"version {to} does not exist in {self.versions}")
        return self._set_pointer(to, "rollback", {"previous": current["version"]})
