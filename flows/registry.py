"""The champion registry: versioned release bundles and an atomically moved champion pointer.

Layout under the registry root::

    versions/v0001/   model.onnx, preprocess.json, bundle.json (the ONNX bundle), metrics.json,
                      blessing.json, manifest.json (training set, with data hash), params.yaml, release.json
    champion.json     {"version": "v0001", ...}   <- the only thing serving reads to find the champion
    history.jsonl     one line per promotion / rollback

A promotion builds the version folder under a temporary name (models/atomic.py), checks it loads and
scores, renames it into place, and only then replaces champion.json (written atomically). A crash at
any point leaves the previous champion.json, and the version folder it names, untouched.

Chain of custody: bundle.json lists the sha256 of every bundle file; release.json anchors bundle.json
(``bundle_sha256``) and the records (``records``). A version is verified whenever it is loaded, and
only names ``vNNNN`` of real folders under versions/ are accepted (no ``../x``, no symlinks out). A
candidate whose model equals the champion's is not promoted again.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.atomic import atomic_dir, write_json, write_text
from models.digest import sha256_file

POINTER = "champion.json"
HISTORY = "history.jsonl"
RELEASE = "release.json"
VERSION = re.compile(r"v\d{4}")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no champion yet, an unknown or corrupt version)."""


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


def _check(d: Path) -> None:
    """release.json's anchor (bundle.json's sha256), its records' sha256, then every bundle file.

    Raises:
        RegistryError: a file is missing or changed since the promotion (one line naming it).
    """
    from models.export import BUNDLE_FILE, BundleError, read_bundle

    try:
        release = json.loads((d / RELEASE).read_text())
        expected = {BUNDLE_FILE: release.get("bundle_sha256"), **release.get("records", {})}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise RegistryError(f"{d / RELEASE} is unreadable ({type(exc).__name__}): roll back to an intact "
                            "version") from None
    for name, digest in expected.items():
        path = d / name
        if not digest or not path.is_file() or sha256_file(path) != digest:
            raise RegistryError(f"{path} does not match the sha256 in {d / RELEASE} (changed, missing or "
                                "promoted before checksums): roll back to an intact version")
    try:
        read_bundle(d)
    except BundleError as exc:
        raise RegistryError(f"{exc}".replace(": export again", ": roll back to an intact version")) from None


class Registry:
    """Versions of released bundles under ``root`` and the pointer that names the champion."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions = self.root / "versions"

    # ---- reading -------------------------------------------------------------------------------
    def champion(self) -> dict | None:
        """The champion pointer, or None before the first promotion.

        Raises:
            RegistryError: champion.json is not JSON or names no version inside the registry.
        """
        path = self.root / POINTER
        if not path.exists():
            return None
        try:
            ptr = json.loads(path.read_text())
            version = ptr["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path} is corrupt ({type(exc).__name__}): point it at a known version with "
                                f"`funnelflow rollback --to VERSION` (known: {self._known()})") from None
        self.version_dir(version, where=f"{path} is corrupt: point it at a known version with "
                                        "`funnelflow rollback --to VERSION`: ")
        return ptr

    def version_dir(self, version: Any, where: str = "") -> Path:
        """The folder of ``version``: a ``vNNNN`` name of a real folder under versions/.

        Raises:
            RegistryError: a malformed name, a path, a symlink or a folder that is not there (``where``
                prefixes the line: which record named it).
        """
        if not isinstance(version, str) or not VERSION.fullmatch(version):
            raise RegistryError(f"{where}{version!r} is not a version name like v0001 (known: {self._known()})")
        d = self.versions / version
        if d.is_symlink() or not d.is_dir() or d.resolve().parent != self.versions.resolve():
            raise RegistryError(f"{where}version {version} does not exist in {self.versions} "
                                f"(known: {self._known()})")
        return d

    def verify(self, version: str) -> Path:
        """The folder of ``version`` after checking its files against the checksums (see ``_check``)."""
        d = self.version_dir(version)
        _check(d)
        return d

    def champion_dir(self) -> Path | None:
        """The champion's version folder, verified, or None before the first promotion."""
        ptr = self.champion()
        return None if ptr is None else self.verify(ptr["version"])

    def champion_metrics(self) -> dict | None:
        """The test metrics recorded when the champion was promoted."""
        d = self.champion_dir()
        return None if d is None else json.loads((d / "metrics.json").read_text())

    def release(self, version: str) -> dict:
        """What a version was promoted from (model, data hash, commit, the champion it was judged against)."""
        path = self.version_dir(version) / RELEASE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path} is unreadable ({type(exc).__name__}): roll back to an intact version") \
                from None

    def list_versions(self) -> list[str]:
        """Version names, oldest first."""
        if not self.versions.exists():
            return []
        return sorted(p.name for p in self.versions.iterdir()
                      if VERSION.fullmatch(p.name) and p.is_dir() and not p.is_symlink())

    def _known(self) -> str:
        return ", ".join(self.list_versions()) or "none"

    def history(self) -> list[dict]:
        """Every promotion and rollback, oldest first."""
        path = self.root / HISTORY
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    # ---- writing -------------------------------------------------------------------------------
    def _next_version(self) -> str:
        nums = [int(v[1:]) for v in self.list_versions()]
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

    def _same_as_champion(self, release: dict[str, Any]) -> dict | None:
        """The champion pointer when ``release`` holds the champion's very model (model.pt or ONNX bytes)."""
        current = self.champion()
        if current is None:
            return None
        served = self.release(current["version"])
        same = any(release.get(k) and release.get(k) == served.get(k) for k in ("model_sha256", "onnx_sha256"))
        return current if same else None

    def promote(self, bundle_dir: Path, records: dict[str, Path], release: dict[str, Any],
                verify: Callable[[Path], None] | None = None) -> dict:
        """Copy the bundle and its records into a new version, verify it, then move the pointer.

        ``records`` maps file names in the version folder to source files (metrics, blessing, ...).
        ``verify(version_dir)`` must raise if the copied bundle cannot serve. A release whose model is
        the champion's is not promoted again: the champion pointer is returned with ``promoted`` False.
        """
        from models.export import BUNDLE_FILE

        same = self._same_as_champion(release)
        if same is not None:
            return {**same, "promoted": False}
        version = self._next_version()
        previous = self.champion()
        before = previous and previous["version"]
        with atomic_dir(self.versions / version) as staging:
            shutil.copytree(bundle_dir, staging, dirs_exist_ok=True)
            for name, src in records.items():
                shutil.copy2(src, staging / name)
            write_json(staging / RELEASE, {
                "version": version, "previous": before, **release,
                "bundle_sha256": sha256_file(staging / BUNDLE_FILE),
                "records": {name: sha256_file(staging / name) for name in sorted(records)}})
            _check(staging)  # what serving will check, before anything can point at it
            if verify is not None:
                verify(staging)
        return {**self._set_pointer(version, "promote", {"previous": before}), "promoted": True}

    def rollback(self, to: str | None = None) -> dict:
        """Point back at ``to`` (default: the champion before the current one); only an intact version.

        With a corrupt champion.json, ``to`` is the way out: the pointer is rewritten without reading it.
        """
        try:
            current = self.champion()
        except RegistryError:
            if to is None:
                raise
            current = None
        if to is None:
            if current is None:
                raise RegistryError("no champion to roll back from: promote one first (`funnelflow run`)")
            earlier = [v for v in self.list_versions() if v < current["version"]]
            if not earlier:
                raise RegistryError(f"{current['version']} is the first version: nothing to roll back to")
            to = earlier[-1]
        self.verify(to)
        return self._set_pointer(to, "rollback", {"previous": current["version"] if current else None})
