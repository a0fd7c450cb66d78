"""`funnelflow`: the one CLI. Each pipeline step is a subcommand; DVC stages call these commands.

An expected failure (bad data, a refused gate, a step run out of order, a bad params.yaml) prints one
line naming the cause and the fix and exits 1; ``-v`` adds the traceback.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import typer

from flows import steps
from flows.console import EXPECTED, one_line, quiet
from flows.gate import GateFailed
from flows.lock import data_dir_lock
from flows.params import TUNED_FILE, Params, Paths, load_params, params_file
from models.atomic import atomic_dir, write_json

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
features_app = typer.Typer(no_args_is_help=True, help="Feature tables and the Feast repo.")
app.add_typer(features_app, name="features")


class _State:
    params_path: Path | None = None
    data_dir: Path | None = None
    verbose: bool = False
    wait: float = 0.0


def _paths() -> Paths:
    return Paths(_State.data_dir.resolve()) if _State.data_dir else Paths.default()


def _fail(exc: BaseException) -> NoReturn:
    if _State.verbose:
        traceback.print_exception(exc)
    for line in one_line(exc).splitlines():
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@contextmanager
def _expected_failures() -> Iterator[None]:
    """Turn an expected failure into its one line and exit 1; anything else is a bug: traceback."""
    try:
        yield
    except EXPECTED as exc:
        _fail(exc)


def _run(step: Callable[..., dict], *args: Any, overrides: dict[str, dict] | None = None,
         echo: bool = True, tuned: bool = True, **kwargs: Any) -> dict:
    """Run a step on params.yaml (``overrides``: section -> fields; ``tuned``: with tuned.yaml's values
    when ``tune.apply`` says so) and the data dir; print its summary."""
    with _expected_failures():
        params = _override(load_params(_State.params_path, tuned=tuned), overrides or {})
        with _locked():
            out = step(params, _paths(), *args, **kwargs)
    if echo:
        typer.echo(json.dumps(out, indent=2, default=str))
    return out


def _locked() -> AbstractContextManager[None]:
    """The data dir's lock for this command (``--wait`` seconds for another holder to finish)."""
    ctx = click.get_current_context(silent=True)
    command = " ".join(["funnelflow", *(ctx.command_path.split()[1:] if ctx else [])])
    return data_dir_lock(_paths().root, command, _State.wait)


def _override(params: Params, overrides: dict[str, dict]) -> Params:
    update = {k: getattr(params, k).model_copy(update=v) for k, v in overrides.items() if v}
    return params.model_copy(update=update)


def _log_to_stderr(verbose: bool) -> None:
    """Our own INFO lines (steps, epochs) in a short format; other libraries' only from WARNING (INFO with -v)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("funnelflow").setLevel(logging.INFO)


@app.callback()
def main(
    params: Path | None = typer.Option(None, "--params", help="params.yaml to read (default: the repo's)"),
    data_dir: Path | None = typer.Option(None, "--data-dir", envvar="FUNNELFLOW_DATA_DIR",
                                         help="where every step reads and writes (default: ./data)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="library logs, and tracebacks of failures"),
    wait: float = typer.Option(0.0, "--wait", min=0, metavar="SECONDS",
                               help="wait this long for another command working in the data dir (default: fail)"),
) -> None:
    """Set up the console, then run the subcommand."""
    quiet()
    _log_to_stderr(verbose)
    # Relative paths are the caller's: resolved here, before a flow or a stage runs elsewhere.
    _State.params_path = params.resolve() if params else None
    _State.data_dir, _State.verbose, _State.wait = data_dir, verbose, wait


@app.command()
def generate(
    rows: int | None = typer.Option(None, help="impressions over all days (default: params generate.rows)"),
    days: int | None = typer.Option(None, help="days simulated (default: params generate.days)"),
    start: str | None = typer.Option(None, help="first day, YYYY-MM-DD (default: params generate.start)"),
    drift_from_day: int | None = typer.Option(
        None, "--drift-from-day", help="concept drift after the first K days (default: params generate)"),
    land_days: int | None = typer.Option(
        None, "--land-days", help="write only the first N days: simulated arrival (default: params generate)"),
    seed: int | None = typer.Option(None),
    out: Path | None = typer.Option(None, help="dataset folder (default: <data>/generated)"),
    oracle_out: Path | None = typer.Option(None, help="true probabilities (default: <data>/oracle/oracle.parquet)"),
) -> None:
    """Write a synthetic funnel dataset as day partitions (dt=YYYY-MM-DD/), and its oracle separately."""
    fields = {"rows": rows, "days": days, "start": start, "drift_from_day": drift_from_day, "land_days": land_days,
              "seed": seed}
    _run(steps.generate, out, oracle_out, overrides={"generate": {k: v for k, v in fields.items() if v is not None}})


@app.command()
def ingest(
    source: Path | None = typer.Argument(None, help="dataset folder, flat or dt=YYYY-MM-DD/ day partitions "
                                                    "(default: params data.source)"),
    format: str | None = typer.Option(None, "--format", help="funnel (contract layout) or a public layout"),
    new_lineage: str | None = typer.Option(
        None, "--new-lineage", metavar="REASON",
        help="empty the raw store and start a new lineage (a new data set), recording REASON"),
) -> None:
    """Add a dataset's days to the raw store: each day checked on its own, unchanged days kept, changed days
    replaced, bad days quarantined (exit 1 naming them; the good days are stored)."""
    _run(steps.ingest, source, format, new_lineage)


@features_app.command("build")
def features_build() -> None:
    """Write the tables that the feature views read."""
    _run(steps.build_features)


@features_app.command("apply")
def features_apply() -> None:
    """Register entities, feature views and the feature service in the Feast registry."""
    _run(steps.features_apply)


@features_app.command("materialize")
def features_materialize() -> None:
    """Load the latest feature values into the online store."""
    _run(steps.features_materialize)


@app.command("training-set")
def training_set() -> None:
    """Point-in-time features for every impression (Feast), split by time, with a manifest."""
    _run(steps.training_set)


@app.command()
def validate(accept_drift: str | None = typer.Option(
        None, "--accept-drift", metavar="REASON",
        help="accept a failure on drift alone: this training set becomes the reference (logged with REASON)"),
) -> None:
    """Validate the training set with Great Expectations; non-zero exit on failure."""
    if accept_drift:
        _run(steps.validate, accept_drift=accept_drift)
    else:
        _run(steps.validate)


@app.command()
def train(resume: bool = typer.Option(False, "--resume", help="continue from the last epoch checkpoint"),
          progress: bool = typer.Option(True, "--progress/--no-progress"),
          nproc: int | None = typer.Option(None, "--nproc", min=1, help=(
              "DDP processes under torchrun: CPU processes (gloo) or one GPU each (NCCL); "
              "default: params train.nproc"))) -> None:
    """Train the configured multi-task model (GPU when present); early stopping on validation."""
    _run(steps.train, resume, progress, overrides={"train": {"nproc": nproc} if nproc else {}})


@app.command()
def evaluate() -> None:
    """Test metrics per task of the candidate, ROC and calibration plots."""
    _run(steps.evaluate)


@app.command("score-champion")
def score_champion() -> None:
    """Score the champion to beat on the candidate's test rows (its version and metrics, for the gate)."""
    _run(steps.score_champion)


# Set by `dvc exp run` in the environment of every stage it runs (dvc/repo/experiments/queue/base.py):
# an experiment is recorded, never promoted.
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
SKIPPED = "skipped.json"  # all that `export --if-blessed` leaves in the bundle folder of a refused candidate


@app.command()
def gate(record_only: bool = typer.Option(
        False, "--record-only",
        help="exit 0 on a refusal: the decision is recorded (blessing.json, reports gate/gate.json) for DVC")) -> None:
    """Per-task thresholds and change bounds vs the champion; writes blessing.json; exit 1 if not blessed."""
    _run(_refusal_recorded(steps.gate) if record_only else steps.gate)


def _refusal_recorded(step: Callable[..., dict]) -> Callable[..., dict]:
    """The gate step with a refusal as its result instead of an error (``dvc repro``/``dvc exp run`` go on,
    and export and promote then do nothing)."""

    def run(params: Params, paths: Paths) -> dict:
        try:
            return step(params, paths)
        except GateFailed as exc:
            typer.secho(f"refused (recorded): {exc.summary}", err=True, fg=typer.colors.YELLOW)
            return {"blessed": False, "refused": exc.summary}

    return run


@app.command()
def export(if_blessed: bool = typer.Option(
        False, "--if-blessed", help="for a refused candidate leave a bundle folder holding only the reason, exit 0")
           ) -> None:
    """ONNX bundle of the blessed candidate, parity-checked against torch."""
    _run(_export_if_blessed if if_blessed else steps.export)


def _export_if_blessed(params: Params, paths: Paths) -> dict:
    """The export step, or for a refused candidate a bundle folder holding only the reason (so that no
    stale bundle survives a refusal)."""
    why = _refusal(paths)
    if why is None:
        return steps.export(params, paths)
    with atomic_dir(paths.bundle) as tmp:
        write_json(tmp / SKIPPED, {"exported": False, "reason": why})
    return {"exported": False, "reason": why}


@app.command()
def promote(if_blessed: bool = typer.Option(False, "--if-blessed", help="for a refused candidate do nothing, exit 0")
            ) -> None:
    """Make the exported bundle the champion (atomic pointer move; earlier versions kept). Never inside
    `dvc exp run`."""
    _run(_promotion(if_blessed))


def _promotion(if_blessed: bool) -> Callable[[Params, Paths], dict]:
    """The promote step, except inside an experiment or (``if_blessed``) for a refused candidate."""

    def run(params: Params, paths: Paths) -> dict:
        why = _experiment() or (_refusal(paths) if if_blessed else None)
        if why is None:
            return steps.promote(params, paths)
        paths.registry.mkdir(parents=True, exist_ok=True)  # the DVC stage's (persistent) out exists
        return {"promoted": False, "reason": why}

    return run


def _refusal(paths: Paths) -> str | None:
    """Why the gate's record refuses the candidate, if it does (a missing record is the step's to report)."""
    record = paths.gate / "blessing.json"
    if not record.exists() or json.loads(record.read_text()).get("blessed"):
        return None
    return f"the gate refused the candidate ({paths.gate / 'blessing.md'})"


def _experiment() -> str | None:
    name = os.environ.get(DVC_EXPERIMENT_ENV)
    return f"experiment {name!r} (dvc exp run): experiments are recorded, never promoted" if name else None


@app.command()
def rollback(to: str | None = typer.Option(None, help="version to serve (default: the previous one)")) -> None:
    """Point the champion back at an earlier version."""
    _run(steps.rollback, to)


@app.command()
def predict(input: Path = typer.Option(..., "--input", exists=True,
                                       help="folder with impressions.parquet (contract layout)"),
            output: Path = typer.Option(..., "--output", help="predictions Parquet file to write")) -> None:
    """Score impressions with the champion: Feast point-in-time features + onnxruntime."""
    _run(steps.predict, input, output)


@app.command()
def serve(host: str | None = typer.Option(None, help="address to listen on (default: params serve.host)"),
          port: int | None = typer.Option(None, min=1, max=65535, help="TCP port (default: params serve.port)")
          ) -> None:
    """Serve the champion over HTTP until stopped (Ctrl-C, SIGTERM): POST /score ranks a user's candidate
    items with Feast online features; /health, /ready, /metrics, /docs. A new champion is picked up
    when the registry's pointer moves. Takes no data-dir lock: it runs beside the retrains."""
    from flows.serve import serve as run_service

    with _expected_failures():
        params = load_params(_State.params_path)
        run_service(params, _paths(), host or params.serve.host, port or params.serve.port)


@app.command()
def run(source: str | None = typer.Option(
        None, help="dataset folder whose new days are ingested first (default: params data.source; with "
                   "`generate`, a raw store filled by `funnelflow ingest DIR` is used as it is)")) -> None:
    """The whole loop as a Prefect flow: ingest -> features -> training set -> validate -> train ->
    evaluate -> score champion -> gate -> export -> promote."""
    from flows.pipeline import retrain

    try:
        with _locked():  # the flow takes it too (deployments); here it is re-entered
            result = retrain(params_path=str(_State.params_path) if _State.params_path else None,
                             data_dir=str(_paths().root), source=source)
    except EXPECTED as exc:
        _fail(exc)
    except Exception as exc:  # Prefect has logged the failed task with its traceback; end on one line
        if _State.verbose:
            traceback.print_exception(exc)
        first = next(iter(str(exc).splitlines()), "")
        typer.secho(f"error: the flow failed: {type(exc).__name__}: {first} (-v for the traceback)", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def compare(
    models: list[str] | None = typer.Option(None, "--model", help="repeatable; default: every model"),
    losses: list[str] | None = typer.Option(None, "--loss", help="repeatable; default: each applicable"),
    epochs: int | None = typer.Option(None, help="default: params train.epochs"),
    out: Path | None = typer.Option(None, help="table folder (default: <data>/compare)"),
) -> None:
    """Train every model (with each applicable loss) on the current training set and the same seed;
    print per-task test metrics, oracle gaps, training time and samples/s."""
    typer.echo(_run(steps.compare, models, losses, epochs, out, echo=False)["table"])


@app.command()
def tune(
    trials: int | None = typer.Option(None, min=1, help="trials this run (default: params tune.trials)"),
    timeout_minutes: float | None = typer.Option(
        None, "--timeout-minutes", min=0.1, help="no trial starts after this (default: params tune.timeout_minutes)"),
    seed: int | None = typer.Option(None, help="the sampler's seed (default: params tune.seed)"),
) -> None:
    """Optuna search of params.yaml tune.space for the configured model, scored on the validation split
    (the test split is never read); the best values go to tuned.yaml beside params.yaml, which the
    pipeline trains with when params.yaml sets tune.apply: true. A rerun continues the study."""
    fields = {"trials": trials, "timeout_minutes": timeout_minutes, "seed": seed}
    # The search starts from params.yaml alone: its own tuned.yaml never shifts what it searches from.
    _run(steps.tune, params_file(_State.params_path).with_name(TUNED_FILE), tuned=False,
         overrides={"tune": {k: v for k, v in fields.items() if v is not None}})


@app.command()
def benchmark(
    dataset: str = typer.Argument(..., help="census"),
    source: Path | None = typer.Option(None, help="default: benchmarks/data/census-income-1994.csv.gz"),
    work_dir: Path | None = typer.Option(None, help="default: <data>/benchmark-census"),
    models: list[str] | None = typer.Option(None, "--model"),
    seeds: list[int] = typer.Option([1, 2, 3], "--seed"),
    epochs: int = typer.Option(3),
) -> None:
    """Real-data benchmark: every model through the full pipeline on the census sample, 3 seeds."""
    from flows.benchmark import benchmark_census, format_table
    from flows.params import REPO_ROOT

    if dataset != "census":
        raise typer.BadParameter(f"unknown benchmark {dataset!r} (known: census)")
    source = source or REPO_ROOT / "benchmarks" / "data" / "census-income-1994.csv.gz"
    with _expected_failures():
        table = benchmark_census(source, work_dir or _paths().root / "benchmark-census", models, tuple(seeds),
                                 epochs, _State.params_path)
    typer.echo(format_table(table))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
