"""Days of operation, simulated: data lands day by day, the scheduled deployment retrains daily.

    python -m benchmarks.daily_loop --days 45 --drift-from-day 30 --plot docs/img/daily_loop.png

The generator writes every day once (concept drift from ``--drift-from-day``); each simulated day its
partition is copied into a landing folder and the Prefect deployment of infra/prefect.yaml is triggered on
it (a local server and process worker, as the cron schedule would). Along the way:

- on ``--bad-day`` the partition arrives with its click labels flipped (contract-valid, so it is stored):
  validation refuses the run and the champion stays; the next day the provider re-delivers the day, which
  replaces that day only, and the loop recovers;
- on ``--empty-day`` the partition arrives with no impressions: ingest quarantines it, the run fails,
  the champion stays;
- when validation reports drift on a day whose data is good (the concept drift), the operator accepts it
  the documented way (`funnelflow validate --accept-drift REASON`, recorded in the drift log) and the day's
  run is triggered again;
- the champion of ``--frozen-day`` is kept aside: per day, both it and the day's champion score that
  day's impressions (click AUC, point-in-time features from the day's training set, onnxruntime);
- at the end, a rollback to the version before the champion.

Prints one line per day (run state, champion, AUCs) and a summary table, also written to days.json in
the work dir (beside deployed.txt and stopped.json: what was deployed, which PIDs were stopped).
``--plot`` draws per-day click AUC of the daily champion against the frozen model. Run it in its own
process: it points this process's Prefect settings at the local server it starts.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Day:
    """What one simulated day did."""

    day: int
    date: str
    event: str
    state: str
    champion: str | None
    auc_champion: float | None
    auc_frozen: float | None


def _params(args: argparse.Namespace, work: Path) -> Path:
    """params.yaml of the simulation: the repo's, with the generator and training sized for a daily loop."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["generate"].update({"rows": args.rows_per_day * args.days, "days": args.days,
                            "drift_from_day": args.drift_from_day or None})
    raw["split"]["window_days"] = args.window_days
    raw["train"].update({"epochs": args.epochs, "batch_size": 512, "lr": 0.005})
    if args.min_click_auc is not None:  # small test runs: a noisy test set, so a looser first bar
        raw["gate"]["absolute"] = [{"metric": "click/auc", "op": ">=", "value": args.min_click_auc}]
    if args.no_change_bounds:  # every good day's candidate is promoted: the test sees versions move
        raw["gate"]["change"] = []
    out = work / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _flip_clicks(day_dir: Path) -> None:
    """Labels flipped at the source: click <-> no click (conversions kept only where a click remains)."""
    imps = pd.read_parquet(day_dir / "impressions.parquet")
    imps["click"] = (1 - imps["click"]).astype("int8")
    imps["conversion"] = (imps["conversion"] * imps["click"]).astype("int8")
    imps["value"] = imps["value"] * imps["conversion"]
    imps.to_parquet(day_dir / "impressions.parquet", index=False)


def _empty(day_dir: Path) -> None:
    imps = pd.read_parquet(day_dir / "impressions.parquet")
    imps.head(0).to_parquet(day_dir / "impressions.parquet", index=False)


def land(future: Path, landing: Path, date: str, spoil: str | None = None) -> None:
    """Copy one day's partition into the landing folder (replacing an earlier delivery of that day)."""
    src, dst = future / f"dt={date}", landing / f"dt={date}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if spoil == "flipped":
        _flip_clicks(dst)
    elif spoil == "empty":
        _empty(dst)


def day_auc(data: Path, version_dir: Path | None, date: str) -> float | None:
    """Click AUC of a registry version on the impressions of ``date`` (from the current training set)."""
    from sklearn.metrics import roc_auc_score

    from features.training_set import load_split
    from models.export import OnnxScorer

    if version_dir is None:
        return None
    rows = pd.concat([load_split(data / "training_set", s) for s in ("train", "validation", "test")])
    rows = rows[rows["event_timestamp"].dt.strftime("%Y-%m-%d") == date]
    if rows.empty or rows["click"].nunique() < 2:
        return None
    preds = OnnxScorer(version_dir).predict(rows)
    return float(roc_auc_score(rows["click"], preds["p_click"]))


def _cli(params_path: Path, data: Path, *args: str) -> str:
    """An operator's `funnelflow` command on the simulation's data dir; its stdout."""
    cmd = [sys.executable, "-m", "flows.cli", "--params", str(params_path), "--data-dir", str(data), *args]
    return subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout


def accept_drift(params_path: Path, data: Path, reason: str) -> None:
    """What the operator does on a drift report of good data: accept it, with the reason on record."""
    _cli(params_path, data, "validate", "--accept-drift", reason)


def simulate(args: argparse.Namespace, work: Path) -> list[Day]:
    """Generate, then land and retrain day by day through the Prefect deployment."""
    from flows import steps
    from flows.params import Paths, load_params
    from flows.registry import Registry
    from infra import local_prefect as lp

    params_path = _params(args, work)
    params = load_params(params_path)
    future, landing, data = work / "future", work / "landing", work / "data"
    steps.generate(params, Paths(work / "generator"), out=future)
    dates = sorted(p.name.removeprefix("dt=") for p in future.glob("dt=*"))
    for date in dates[: args.history_days - 1]:
        land(future, landing, date)
    registry, frozen, days = Registry(data / "registry"), None, []
    os.environ["FUNNELFLOW_PREFECT_RUN_DIR"] = str(work / "prefect")
    os.environ["PREFECT_WORKER_QUERY_SECONDS"] = "1"  # a run triggered is picked up at once (default: 10 s)
    lp.start(port=lp.free_port())
    try:
        (work / "deployed.txt").write_text(lp.deploy())
        # The simulation triggers each day itself; the real 03:00 cron would add a run on the defaults.
        lp.pause_schedules()
        for i in range(args.history_days, args.days + 1):
            date = dates[i - 1]
            event = ("labels flipped" if i == args.bad_day else "empty partition" if i == args.empty_day
                     else "re-delivered " + dates[args.bad_day - 1] if i == args.bad_day + 1 else "")
            land(future, landing, date, {args.bad_day: "flipped", args.empty_day: "empty"}.get(i))
            if i == args.bad_day + 1:
                land(future, landing, dates[args.bad_day - 1])  # the provider's corrected delivery
            day_run = {"params_path": str(params_path), "data_dir": str(data), "source": str(landing)}
            run = lp.trigger(day_run, poll_interval=1)
            if run["state"] != "COMPLETED" and "drift in" in (run["message"] or "") and i != args.bad_day:
                accept_drift(params_path, data, f"day {i}: the behaviour changed, the data is right")
                event = (event + "; " if event else "") + "drift accepted"
                run = lp.trigger(day_run, poll_interval=1)
            champ = registry.champion()
            if i == args.frozen_day and champ is not None:
                frozen = registry.versions / champ["version"]
            scored = i != args.bad_day  # flipped labels say nothing of a model; a refused candidate's day does
            champ_dir = registry.champion_dir()
            days.append(Day(i, date, event, run["state"] or "?", champ["version"] if champ else None,
                            day_auc(data, champ_dir, date) if scored else None,
                            day_auc(data, frozen, date) if scored else None))
            print(json.dumps(asdict(days[-1])), flush=True)
        rolled = _cli(params_path, data, "rollback")  # the operator's rollback to the previous version
        print(f"rollback: {rolled.strip()}", flush=True)
    finally:
        (work / "stopped.json").write_text(json.dumps(lp.stop()))  # the PIDs it stopped
    return days


def plot(days: list[Day], out: Path, drift_from_day: int | None, frozen_day: int) -> None:
    """Per-day click AUC of the daily champion and of the model frozen on ``frozen_day``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.DataFrame([asdict(d) for d in days])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(df["day"], df["auc_champion"], "o-", label="daily champion")
    ax.plot(df["day"], df["auc_frozen"], "s--", label=f"frozen on day {frozen_day}")
    if drift_from_day:
        ax.axvline(drift_from_day + 0.5, color="grey", ls=":", label=f"concept drift after day {drift_from_day}")
    for d in days:
        if d.state != "COMPLETED":
            ax.axvline(d.day, color="tab:red", alpha=0.3)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("click AUC on the day's impressions")
    ax.set_title("Daily champion vs a frozen model\n(red line: run refused by the data checks or the gate; "
                 "champion kept)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The simulation's settings."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--history-days", type=int, default=15, help="days landed before the first daily run")
    ap.add_argument("--drift-from-day", type=int, default=30, help="0: no drift")
    ap.add_argument("--frozen-day", type=int, default=15)
    ap.add_argument("--bad-day", type=int, default=20)
    ap.add_argument("--empty-day", type=int, default=25)
    ap.add_argument("--rows-per-day", type=int, default=4000)
    ap.add_argument("--window-days", type=int, default=14)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--min-click-auc", type=float, default=None, help="replace the gate's absolute bounds")
    ap.add_argument("--no-change-bounds", action="store_true", help="drop the gate's bounds against the champion")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Simulate, print the table and draw the plot."""
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="funnelflow-days-"))
    work.mkdir(parents=True, exist_ok=True)
    days = simulate(args, work)
    (work / "days.json").write_text(json.dumps([asdict(d) for d in days], indent=1))
    print(pd.DataFrame([asdict(d) for d in days]).to_markdown(index=False, floatfmt=".4f"))
    if args.plot:
        plot(days, args.plot, args.drift_from_day, args.frozen_day)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
