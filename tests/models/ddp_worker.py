"""A torchrun worker for test_distributed.py: ``models.distributed.main``, with Python's audit hook
recording every file this rank opens for writing or renames under the model dir (to RANK.json in
AUDIT_DIR), and rank 0 copying the model dir to INTERRUPTED after epoch 0: what a run interrupted
after its first epoch leaves on disk (every rank has passed the epoch's barrier, so the checkpoint is
complete), for a resumed run to start from.

    python -m torch.distributed.run ... tests/models/ddp_worker.py SPEC_JSON AUDIT_DIR INTERRUPTED
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def _recorder(out_dir: str, written: list[str]):
    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path) and str(args[0]).startswith(out_dir + os.sep):
            mode, flags = args[1], args[2]
            if (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS):
                written.append(str(args[0]))
        elif event == "os.rename" and str(args[1]).startswith(out_dir + os.sep):
            written.append(str(args[1]))
    return hook


def main() -> int:
    spec, audit, interrupted = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    out_dir = json.loads(spec.read_text())["out_dir"]
    written: list[str] = []
    sys.addaudithook(_recorder(out_dir, written))
    from models.distributed import main as worker

    def snapshot(epoch: int, row: dict) -> None:
        if epoch == 0 and os.environ["RANK"] == "0":
            shutil.copytree(out_dir, interrupted)

    try:
        return worker([str(spec)], on_epoch_end=snapshot)
    finally:
        (audit / f"{os.environ['RANK']}.json").write_text(json.dumps(written))


if __name__ == "__main__":
    sys.exit(main())
