"""The promotion gate: per-task metric thresholds, TFX/TFMA style.

Absolute bounds (``click/auc >= 0.70``) must hold for the candidate. Change bounds compare it with the
champion evaluated on the SAME test rows (the score_champion step re-scores the champion's ONNX
bundle), so a drop is a real drop and not a different test period. The decision record lists every
check with its value, bound, baseline and verdict; a missing or NaN metric fails its check.

The blessing names what it blessed (``candidate``: the sha256 of model.pt, the training set's data
hash, the params hash); export and promotion recompute these from disk and refuse on any difference.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.params import Bound, ChangeBound, GateConfig
from models.atomic import write_json


class GateFailed(RuntimeError):
    """The candidate is not blessed: the message is the decision table, ``summary`` the one-line cause."""

    def __init__(self, record: str, summary: str = ""):
        super().__init__(record)  # one arg, so that unpickling (Prefect stores failed states) rebuilds it
        self.summary = summary or record


class CustodyError(RuntimeError):
    """What is on disk is not what the gate blessed (the model, data or params changed since)."""


CANDIDATE_KEYS = {"model_sha256": "model (model.pt)", "data_hash": "training set (manifest data_hash)",
                  "params_sha256": "params (tasks, features, split, model, train)"}


@dataclass
class Check:
    """One bound checked: the candidate's value, the threshold it met or missed, and the champion's value."""

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
        return Check("change", c.metric, "vs champion", v, None, None, True,
                     "skipped: the champion has no value for this metric")
    name, x = c.limit
    rule, bound, higher = {  # (rule, threshold, higher is better) of the one limit the bound sets
        "max_drop": (f"drop <= {x:g}", base - x, True),
        "max_drop_rel": (f"drop <= {x:.1%}", base * (1 - x), True),
        "max_increase": (f"increase <= {x:g}", base + x, False),
        "max_increase_rel": (f"increase <= {x:.1%}", base * (1 + x), False),
    }[name]
    ok = v is not None and (v >= bound if higher else v <= bound)
    return Check("change", c.metric, rule, v, bound, base, ok, "" if v is not None else "metric missing or NaN")


def decide(candidate: dict[str, float], champion: dict[str, float] | None, cfg: GateConfig,
           champion_version: str | None = None, hashes: dict[str, str] | None = None) -> dict:
    """The blessing record: every check, ``blessed`` only if all pass, and the candidate's ``hashes``
    (CANDIDATE_KEYS) that bind it to what was judged."""
    checks = [_absolute(b, candidate) for b in cfg.absolute]
    if champion is not None:
        checks += [_change(c, candidate, champion) for c in cfg.change]
    return {"blessed": all(c.passed for c in checks), "champion_version": champion_version,
            "candidate": hashes or {}, "checks": [asdict(c) for c in checks]}


def to_markdown(blessing: dict) -> str:
    """The decision as a markdown table (the gate's record and the flow's artifact)."""
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


def not_blessed(blessing: dict, record: Path) -> GateFailed:
    """The error for a refused candidate: the table, and one line naming the failed checks and the fix."""
    failed = [c for c in blessing["checks"] if not c["passed"]]
    shown = ", ".join(f"{c['metric']} {c['rule']}" + ("" if c["value"] is None else f" ({c['value']:.4g})")
                      for c in failed)
    summary = (f"the gate refused the candidate: {len(failed)} of {len(blessing['checks'])} checks failed: {shown}"
               f" (table: {record}); train a better model or change params.yaml `gate`, then `funnelflow gate`")
    return GateFailed(to_markdown(blessing), summary)


def write_blessing(blessing: dict, path: Path) -> None:
    """Write the decision record atomically."""
    write_json(path, blessing)


def require_blessed(path: Path, current: dict[str, str]) -> dict:
    """The blessing at ``path`` if it blessed exactly ``current`` (the candidate's hashes recomputed from
    disk); export and promotion call this first: nothing unblessed, or changed since, leaves the gate.

    Raises:
        GateFailed: no blessing, or a refusal.
        CustodyError: a hash differs from the blessed one (one line naming it and the fix).
    """
    if not path.exists():
        raise GateFailed(f"{path} is missing: run `funnelflow gate` first")
    blessing = json.loads(path.read_text())
    if not blessing.get("blessed"):
        raise not_blessed(blessing, path)
    blessed = blessing.get("candidate") or {}
    for key, what in CANDIDATE_KEYS.items():
        if blessed.get(key) != current[key]:
            raise CustodyError(
                f"{path} blessed {what} {_short(blessed.get(key))} but it is {_short(current[key])} now: run "
                "`funnelflow evaluate`, `funnelflow score-champion` and `funnelflow gate` again on what is there")
    return blessing


def _short(digest: str | None) -> str:
    return "(none recorded)" if not digest else digest[:12]
