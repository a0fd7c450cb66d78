"""`funnelflow`: the one CLI. Each pipeline step is a subcommand; DVC stages call these commands."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from flows import steps
from flows.params import Params, Paths, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
features_app = typer.Typer(no_args_is_help=True, help="Feature tables and the Feast repo.")
app.add_typer(features_app, name="features")


class _State:
    params_path: Optional[Path] = None
    data_dir: Optional[Path] = None


def _ctx() -> tuple[Params, Paths]:
    params = load_params(_State.params_path)
    paths = Paths(_State.data_dir.resolve()) if _State.data_dir else Paths.default()
    return params, paths


def _run(step, *args, **kwargs) -> dict:
    """Run a step; known input errors print their message and exit 1 (no traceback for bad data)."""
    from features.contract import ContractError
    from features.validation import ValidationFailed
    from flows.gate import GateFailed
    from flows.registry import RegistryError

    params, paths = _ctx()
    try:
        out = step(params, paths, *args, **kwargs)
    except (ContractError, ValidationFailed, GateFailed, RegistryError) as exc:
        typer.secho(f"{type(exc).__name__}: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(json.dumps(out, indent=2, default=str))
    return out


@app.callback()
def main(
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read (default: the repo's)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FUNNELFLOW_DATA_DIR",
                                            help="where every step reads and writes (default: ./data)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("funnelflow").setLevel(logging.INFO)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    _State.params_path, _State.data_dir = params, data_dir


@app.command()
def generate(
    rows: Optional[int] = typer.Option(None, help="impressions (default: params generate.rows)"),
    days: Optional[int] = typer.Option(None),
    seed: Optional[int] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="dataset folder (default: <data>/generated)"),
    oracle_out: Optional[Path] = typer.Option(None, help="true probabilities (default: <data>/oracle/oracle.parquet)"),
) -> None:
    """Write a synthetic funnel dataset in the contract layout (and its oracle, separately)."""
    params, paths = _ctx()
    overrides = {k: v for k, v in {"rows": rows, "days": days, "seed": seed}.items() if v is not None}
    params = params.model_copy(update={"generate": params.generate.model_copy(update=overrides)})
    typer.echo(json.dumps(steps.generate(params, paths, out, oracle_out), indent=2, default=str))


@app.command()
def ingest(
    source: Optional[Path] = typer.Argument(None, help="dataset folder (default: params data.source)"),
    format: Optional[str] = typer.Option(None, "--format", help="funnel (contract layout) or a public layout"),
) -> None:
    """Check a dataset against the contract and store it as the raw snapshot."""
    _run(steps.ingest, source, format)


@features_app.command("build")
def features_build() -> None:
    """Write the profile and rolling-aggregate tables that the feature views read."""
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
    """Test metrics per task (and the champion's on the same rows), ROC and calibration plots."""
    _run(steps.evaluate)


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
def rollback(to: Optional[str] = typer.Option(None, help="version to serve (default: the previous one)")) -> None:
    """Point the champion back at an earlier version."""
    _run(steps.rollback, to)


@app.command()
def predict(input: Path = typer.Option(..., "--input", help="folder with impressions.parquet (contract layout)"),
            output: Path = typer.Option(..., "--output", help="predictions Parquet file to write")) -> None:
    """Score impressions with the champion: Feast point-in-time features + onnxruntime."""
    _run(steps.predict, input, output)


@app.command()
def run(source: Optional[str] = typer.Option(None, help="dataset folder (default: params data.source)")) -> None:
    """The whole loop as a Prefect flow: ingest -> features -> training set -> validate -> train ->
    evaluate -> gate -> export -> promote."""
    from flows.pipeline import retrain

    _, paths = _ctx()
    try:
        result = retrain(params_path=str(_State.params_path) if _State.params_path else None,
                         data_dir=str(paths.root), source=source)
    except Exception as exc:  # the flow's failure reason (gate table, validation summary) is the message
        typer.secho(f"{type(exc).__name__}: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(json.dumps(result, indent=2, default=str))


@app.command()
def compare(
    models: Optional[list[str]] = typer.Option(None, "--model", help="repeatable; default: every model"),
    losses: Optional[list[str]] = typer.Option(None, "--loss", help="repeatable; default: each applicable"),
    epochs: Optional[int] = typer.Option(None, help="default: params train.epochs"),
    out: Optional[Path] = typer.Option(None, help="table folder (default: <data>/compare)"),
) -> None:
    """Train every model (with each applicable loss) on the current training set and the same seed;
    print per-task test metrics, oracle gaps, training time and samples/s."""
    from models.compare import compare_models

    params, paths = _ctx()
    train = params.train if epochs is None else params.train.model_copy(update={"epochs": epochs})
    tr, va, te = steps._splits(paths, "train", "validation", "test")
    table = compare_models(tr, va, te, params.task_graph, params.model, train,
                           oracle_df=steps._oracle(paths, te["impression_id"]), models=models, losses=losses,
                           progress=True)
    out = out or paths.root / "compare"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare.csv", index=False)
    md = table.to_markdown(index=False, floatfmt=".4f")
    (out / "compare.md").write_text(md)
    typer.echo(md)


@app.command()
def benchmark(
    dataset: str = typer.Argument(..., help="census"),
    source: Optional[Path] = typer.Option(None, help="default: benchmarks/data/census-income-1994.csv.gz"),
    work_dir: Optional[Path] = typer.Option(None, help="default: <data>/benchmark-census"),
    models: Optional[list[str]] = typer.Option(None, "--model"),
    seeds: list[int] = typer.Option([1, 2, 3], "--seed"),
    epochs: int = typer.Option(3),
) -> None:
    """Real-data benchmark: every model through the full pipeline on the census sample, 3 seeds."""
    from flows.benchmark import benchmark_census, format_table
    from flows.params import REPO_ROOT

    if dataset != "census":
        raise typer.BadParameter(f"unknown benchmark {dataset!r} (known: census)")
    _, paths = _ctx()
    source = source or REPO_ROOT / "benchmarks" / "data" / "census-income-1994.csv.gz"
    table = benchmark_census(source, work_dir or paths.root / "benchmark-census", models, tuple(seeds), epochs,
                             _State.params_path)
    typer.echo(format_table(table))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
