"""`funnelflow`: the one CLI. Each pipeline step is a subcommand; DVC stages call these commands.

An expected failure (bad data, a refused gate, a step run out of order, a bad params.yaml) prints one
line naming the cause and the fix and exits 1; ``-v`` adds the traceback.
"""
from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

from flows import steps
from flows.console import EXPECTED, one_line, quiet
from flows.params import Params, Paths, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
features_app = typer.Typer(no_args_is_help=True, help="Feature tables and the Feast repo.")
app.add_typer(features_app, name="features")


class _State:
    params_path: Path | None = None
    data_dir: Path | None = None
    verbose: bool = False


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
         echo: bool = True, **kwargs: Any) -> dict:
    """Run a step on params.yaml (``overrides``: section -> fields) and the data dir; print its summary."""
    with _expected_failures():
        params = _override(load_params(_State.params_path), overrides or {})
        out = step(params, _paths(), *args, **kwargs)
    if echo:
        typer.echo(json.dumps(out, indent=2, default=str))
    return out


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
) -> None:
    """Set up the console, then run the subcommand."""
    quiet()
    _log_to_stderr(verbose)
    _State.params_path, _State.data_dir, _State.verbose = params, data_dir, verbose


@app.command()
def generate(
    rows: int | None = typer.Option(None, help="impressions (default: params generate.rows)"),
    days: int | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    out: Path | None = typer.Option(None, help="dataset folder (default: <data>/generated)"),
    oracle_out: Path | None = typer.Option(None, help="true probabilities (default: <data>/oracle/oracle.parquet)"),
) -> None:
    """Write a synthetic funnel dataset in the contract layout (and its oracle, separately)."""
    fields = {k: v for k, v in {"rows": rows, "days": days, "seed": seed}.items() if v is not None}
    _run(steps.generate, out, oracle_out, overrides={"generate": fields})


@app.command()
def ingest(
    source: Path | None = typer.Argument(None, help="dataset folder (default: params data.source)"),
    format: str | None = typer.Option(None, "--format", help="funnel (contract layout) or a public layout"),
) -> None:
    """Check a dataset against the contract and store it as the raw snapshot."""
    _run(steps.ingest, source, format)


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
def validate() -> None:
    """Validate the training set with Great Expectations; non-zero exit on failure."""
    _run(steps.validate)


@app.command()
def train(resume: bool = typer.Option(False, "--resume", help="continue from the last epoch checkpoint"),
          progress: bool = typer.Option(True, "--progress/--no-progress")) -> None:
    """Train the configured multi-task model (GPU when present); early stopping on validation."""
    _run(steps.train, resume, progress)


@app.command()
def evaluate() -> None:
    """Test metrics per task of the candidate, ROC and calibration plots."""
    _run(steps.evaluate)


@app.command("score-champion")
def score_champion() -> None:
    """Score the champion to beat on the candidate's test rows (its version and metrics, for the gate)."""
    _run(steps.score_champion)


@app.command()
def gate() -> None:
    """Per-task thresholds and change bounds vs the champion; writes blessing.json; exit 1 if not blessed."""
    _run(steps.gate)


@app.command()
def export() -> None:
    """ONNX bundle of the blessed candidate, parity-checked against torch."""
    _run(steps.export)


@app.command()
def promote() -> None:
    """Make the exported bundle the champion (atomic pointer move; earlier versions kept)."""
    _run(steps.promote)


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
def run(source: str | None = typer.Option(None, help="dataset folder (default: params data.source)")) -> None:
    """The whole loop as a Prefect flow: ingest -> features -> training set -> validate -> train ->
    evaluate -> score champion -> gate -> export -> promote."""
    from flows.pipeline import retrain

    try:
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
