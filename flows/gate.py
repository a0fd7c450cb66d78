"""The promotion gate: per-task metric thresholds, TFX/TFMA style.

Absolute bounds (``click/auc >= 0.70``) must hold for the candidate. Change bounds compare it with the
current champion evaluated on the SAME test rows (the evaluate step re-scores the champion's ONNX
bundle), so a drop is a real drop and not a different test period. The decision record lists every
check with its value, bound, baseline and verdict; a missing or NaN metric fails its check.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.params import Bound, ChangeBound, GateConfig
from flows.registry import write_json_atomic


class GateFailed(RuntimeError):
    """The candidate is not blessed; the message is the decision table."""


@dataclass
class Check:
    kind: str            # "absolute" | "change"
    metric: str
    rule: str            # e.g. ">= 0.7" or "drop <= 0.002"
    value: float | None  # the candidate's metric
    bound: float | None  # the threshold the value was compared with
    baseline: float | None
    passed: bool
    note: str = ""


def _num(metrics: dict, key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _absolute(b: Bound, cand: dict) -> Check:
    v = _num(cand, b.metric)
    ok = v is not None and (v >= b.value if b.op == ">=" else v <= b.value)
    return Check("absolute", b.metric, f"{b.op} {b.value:g}", v, b.value, None, ok,
                 "" if v is not None else "metric missing or NaN")


def _change(c: ChangeBound, cand: dict, champ: dict) -> Check:
    v, base = _num(cand, c.metric), _num(champ, c.metric)
    if base is None:
        return Check("change", c.metric, "vs champion", v, None, None, True, "champion has no value: skipped")
    if c.max_drop is not None:
        rule, bound, higher = f"drop <= {c.max_drop:g}", base - c.max_drop, True
    elif c.max_drop_rel is not None:
        rule, bound, higher = f"drop <= {c.max_drop_rel:.1%}", base * (1 - c.max_drop_rel), True
    elif c.max_increase is not None:
        rule, bound, higher = f"increase <= {c.max_increase:g}", base + c.max_increase, False
    elif c.max_increase_rel is not None:
        rule, bound, higher = f"increase <= {c.max_increase_rel:.1%}", base * (1 + c.max_increase_rel), False
    else:
        raise ValueError(f"change bound on {c.metric} sets no limit")
    ok = v is not None and (v >= bound if higher else v <= bound)
    return Check("change", c.metric, rule, v, bound, base, ok, "" if v is not None else "metric missing or NaN")


def decide(candidate: dict[str, float], champion: dict[str, float] | None, cfg: GateConfig,
           champion_version: str | None = None) -> dict:
    """The blessing record: every check, and ``blessed`` only if all pass."""
    checks = [_absolute(b, candidate) for b in cfg.absolute]
    if champion is not None:
        checks += [_change(c, candidate, champion) for c in cfg.change]
    return {"blessed": all(c.passed for c in checks), "champion_version": champion_version,
            "checks": [asdict(c) for c in checks]}


def to_markdown(blessing: dict) -> str:
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    base = blessing.get("champion_version") or "none (first model)"
    lines = [f"## Gate: {verdict} (champion: {base})", "",
             "| check | metric | rule | value | bound | champion | result |", "|---|---|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.5g}"  # noqa: E731
    for c in blessing["checks"]:
        res = ("pass" if c["passed"] else "**FAIL**") + (f" ({c['note']})" if c["note"] else "")
        lines.append(f"| {c['kind']} | {c['metric']} | {c['rule']} | {fmt(c['value'])} | {fmt(c['bound'])} "
                     f"| {fmt(c['baseline'])} | {res} |")
    return "\n".join(lines)


def write_blessing(blessing: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, blessing)


def require_blessed(path: Path) -> dict:
    """Export and promotion call this first: nothing unblessed ever leaves the gate."""
    if not path.exists():
        raise GateFailed(f"{path} is missing: run the gate first")
    blessing = json.loads(path.read_text())
    if not blessing.get("blessed"):
        raise GateFailed(to_markdown(blessing))
    return blessing
