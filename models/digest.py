"""File digests: one sha256 helper for bundle checksums, registry records, cache keys and feature tables,
and the error of an artifact refused on load.

Numpy- and torch-free, so light modules (the registry, the feature builder, the CLI's error handling)
can import it directly.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactRefused(ValueError):
    """A stored artifact cannot be trusted (unsafe to load, corrupt): one line naming it and the way out."""
