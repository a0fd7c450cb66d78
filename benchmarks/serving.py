"""Serving cost of the exported champion: onnxruntime vs torch eager, same model, same inputs.

    python -m benchmarks.serving                       # the champion in data/registry (after `make run`)
    python -m benchmarks.serving --fresh --models mmoe,ple,aitm,htlnet   # small champions built in a temp dir

What is timed, per model:

* ``torch eager``: the trained FunnelNet under ``torch.inference_mode()``, numpy in, numpy out.
* ``onnxruntime``: an ``InferenceSession`` on the bundle's model.onnx, CPU provider, graph optimisation
  ORT_ENABLE_ALL (onnxruntime's default, so the same graph OnnxScorer runs).
* ``OnnxScorer.predict``: what a caller of models/export.py pays: encode a pandas frame with the
  bundle's Preprocessor, run the session, build the predictions frame.

The first two get already-encoded inputs (categorical int64 [N, C], numeric float32 [N, F]) from
real rows of ``<data>/training_set/test.parquet``, encoded with the bundle's preprocess.json.
Batch 1: p50 / p99 latency over ``--calls`` calls after a warm-up, each call on a different row,
with ONE intra-op thread on both engines (a latency server runs one request per core). Batch
``--batch``: rows/s, median over ``--repeats`` calls, with all cores on both engines. Engines take
turns in ``--rounds`` blocks so a load change on the machine hits all of them alike.

Where the torch model comes from: a registry version holds the ONNX bundle only (no torch
checkpoint), so the torch side loads ``<data>/model`` (train_model's output) and is checked against
the champion first: same preprocess.json, same model name, and outputs within 1e-4 of onnxruntime's
on test rows. A later candidate that was never promoted fails that check, with a message.

``--fresh`` builds champions in a temporary data dir with the real step functions (generate ->
ingest -> features -> Feast -> training set -> train -> evaluate -> gate -> export -> promote; the
validation step is skipped, and the gate's bounds are emptied: quality is not measured here) at
``--fresh-rows`` rows and 1 epoch, keeping params.yaml's architecture so the graph is the real size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flows.params import Paths
from flows.registry import Registry
from models.export import BUNDLE_FILE, INPUT_NAMES, ONNX_FILE, OnnxScorer, parity_error
from models.networks import switch_model
from models.train import PREPROCESS_FILE, TrainedModel, load_model

PARITY_TOL = 1e-4           # export checks 1e-5 on its own batch; other rows and batch 1 get slack
TARGET_P99_US = 500.0       # the serving target: batch-1 p99 under 0.5 ms
FRESH_INDEX = "serving-champions.json"
Runner = Callable[[np.ndarray, np.ndarray], list]


@dataclass
class Champion:
    """One model to benchmark: its registry version (the ONNX bundle) and its torch model dir."""

    name: str
    version_dir: Path
    model_dir: Path
    test_path: Path


# ----------------------------------------------------------------------------- statistics
def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean in microseconds (linear-interpolated percentiles, numpy's default)."""
    us = np.asarray(seconds, dtype=np.float64) * 1e6
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "mean": float(us.mean()), "n": int(us.size)}


# ----------------------------------------------------------------------------- champions
def find_champion(data_dir: Path) -> Champion:
    paths = Paths(data_dir.resolve())
    version_dir = Registry(paths.registry).champion_dir()
    if version_dir is None:
        raise SystemExit(f"no champion in {paths.registry} (no champion.json): run `make run` first, "
                         f"or pass --fresh to build a small one in a temp dir")
    name = json.loads((version_dir / BUNDLE_FILE).read_text())["model"]
    return Champion(name, version_dir, paths.model, paths.training_set / "test.parquet")


def build_fresh(root: Path, models: list[str], rows: int, epochs: int) -> list[Champion]:
    """Run the pipeline's step functions in ``root``; one train..promote cycle per model. Each
    model's torch dir is copied aside right after its promotion (the next cycle overwrites it)."""
    from flows import steps
    from flows.params import GateConfig, load_params

    base = load_params()
    params = base.model_copy(update={
        "generate": base.generate.model_copy(update={"rows": rows}),
        "train": base.train.model_copy(update={"epochs": epochs}),
        "gate": GateConfig(),  # no bounds: a 1-epoch model on a small set must still reach the registry
    })
    paths = Paths(root / "data")
    for step in (steps.generate, steps.ingest, steps.build_features, steps.features_apply,
                 steps.features_materialize, steps.training_set):
        step(params, paths)
    out = []
    for name in models:
        p = params.model_copy(update={"model": switch_model(params.model, name)})
        steps.train(p, paths, progress=False)
        steps.evaluate(p, paths)
        steps.score_champion(p, paths)
        steps.gate(p, paths)
        steps.export(p, paths)
        version = steps.promote(p, paths)["champion"]
        model_dir = root / "torch" / name
        shutil.rmtree(model_dir, ignore_errors=True)  # a --fresh-dir reused for another --models list
        shutil.copytree(paths.model, model_dir)
        test_path = paths.training_set / "test.parquet"
        out.append(Champion(name, paths.registry / "versions" / version, model_dir, test_path))
        print(f"fresh: {name} -> {version}", flush=True)
    (root / FRESH_INDEX).write_text(json.dumps([{k: str(v) for k, v in vars(c).items()} for c in out], indent=2))
    return out


def reuse_fresh(root: Path, models: list[str]) -> list[Champion] | None:
    """The champions a previous --fresh-dir run built in ``root``, if it built every one of ``models``."""
    index = root / FRESH_INDEX
    if not index.exists():
        return None
    built = {d["name"]: Champion(d["name"], Path(d["version_dir"]), Path(d["model_dir"]), Path(d["test_path"]))
             for d in json.loads(index.read_text())}
    return [built[m] for m in models] if set(models) <= set(built) else None


# ----------------------------------------------------------------------------- engines
def ort_session(onnx_path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_runner(session, names: list[str]) -> Runner:
    def run(cat: np.ndarray, num: np.ndarray) -> list:
        return session.run(names, {INPUT_NAMES[0]: cat, INPUT_NAMES[1]: num})
    return run


def torch_runner(net: torch.nn.Module, names: list[str], device: torch.device) -> Runner:
    """Numpy in, numpy out, like the session: the host<->tensor (and device) copies are part of the cost."""
    def run(cat: np.ndarray, num: np.ndarray) -> list:
        with torch.inference_mode():
            out = net(torch.from_numpy(cat).to(device), torch.from_numpy(num).to(device))
            return [out[n].cpu().numpy() for n in names]  # .cpu() also waits for a CUDA stream
    return run


def load_torch(champ: Champion, device: torch.device) -> TrainedModel:
    """The torch model of ``champ``, refusing a model dir that is not the champion's."""
    meta = json.loads((champ.version_dir / BUNDLE_FILE).read_text())
    if not (champ.model_dir / PREPROCESS_FILE).exists():
        raise SystemExit(f"no torch model in {champ.model_dir}: the registry holds ONNX only; "
                         "run `make run` or pass --fresh")
    m = load_model(champ.model_dir)
    same_pre = (champ.model_dir / PREPROCESS_FILE).read_bytes() == (champ.version_dir / PREPROCESS_FILE).read_bytes()
    if m.model_cfg.name != meta["model"] or not same_pre:
        raise SystemExit(f"{champ.model_dir} ({m.model_cfg.name}) is not the champion {champ.version_dir.name} "
                         f"({meta['model']}): a later, unpromoted candidate? Re-run `make run` or pass --fresh")
    m.net.to(device).eval()
    return m


def check_parity(torch_run: Runner, ort_run: Runner, names: list[str], cat: np.ndarray, num: np.ndarray) -> float:
    """Both engines on the benchmark's own input path, one batch and three single rows."""
    err = 0.0
    for sl in (slice(0, 512), slice(0, 1), slice(1, 2), slice(2, 3)):
        ref = dict(zip(names, torch_run(cat[sl], num[sl]), strict=True))
        got = dict(zip(names, ort_run(cat[sl], num[sl]), strict=True))
        err = max(err, parity_error(ref, got))
    if not err < PARITY_TOL:
        raise SystemExit(f"torch and onnxruntime disagree by {err:.3g} (>= {PARITY_TOL}): not the same model")
    return err


# ----------------------------------------------------------------------------- timing
def time_calls(run: Callable, inputs: list[tuple], start: int, calls: int) -> list[float]:
    """Seconds per call; call i gets ``inputs[(start + i) % len(inputs)]``, so consecutive calls (and
    the warm-up) never re-read the same row or batch: no cache-hot repeats of one input."""
    out, n, clock = [], len(inputs), time.perf_counter
    for i in range(start, start + calls):
        a = inputs[i % n]
        t0 = clock()
        run(*a)
        out.append(clock() - t0)
    return out


def take_turns(jobs: dict[str, Callable[[int, int], list[float]]], total: int, rounds: int,
               warmup: int) -> dict[str, list[float]]:
    """Warm every job up, then run them in ``rounds`` alternating blocks; ``job(start, calls)``."""
    for job in jobs.values():
        job(0, warmup)
    per = max(1, total // rounds)
    res: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(rounds):
        for k, job in jobs.items():
            res[k] += job(warmup + r * per, per)
    return res


def scorer_stages(scorer: OnnxScorer, frames: list[tuple[pd.DataFrame]], calls: int) -> dict[str, float]:
    """p50 µs of ``OnnxScorer.predict`` on single-row frames and of each stage of its body (the same
    calls, with clocks). Whole and staged calls alternate row by row, so both see the same machine."""
    pre, clock = scorer.preprocessor, time.perf_counter
    stages: dict[str, list[float]] = {k: [] for k in ("predict", "encode categorical", "encode numeric",
                                                       "session.run", "output frame")}
    for i in range(calls):
        (df,) = frames[i % len(frames)]
        t0 = clock()
        scorer.predict(df)
        stages["predict"].append(clock() - t0)
        (df,) = frames[(i + 1) % len(frames)]
        t0 = clock()
        cat = pre.encode_categorical(df)
        t1 = clock()
        num = pre.encode_numeric(df)
        t2 = clock()
        scores = scorer.run(cat, num)
        t3 = clock()
        scorer.output_frame(df, scores)
        t4 = clock()
        for k, a, b in (("encode categorical", t0, t1), ("encode numeric", t1, t2), ("session.run", t2, t3),
                        ("output frame", t3, t4)):
            stages[k].append(b - a)
    return {k: latency_summary(v)["p50"] for k, v in stages.items()}


# ----------------------------------------------------------------------------- one model
def bench_model(champ: Champion, args, device: torch.device, all_threads: int) -> tuple[list[dict], dict[str, float]]:
    test = pd.read_parquet(champ.test_path)
    m = load_torch(champ, device)
    names: list[str] = json.loads((champ.version_dir / BUNDLE_FILE).read_text())["outputs"]
    cat, num = m.preprocessor.encode(test)
    onnx = champ.version_dir / ONNX_FILE
    torch_run = torch_runner(m.net, names, device)
    ort1, ort_all = ort_runner(ort_session(onnx, 1), names), ort_runner(ort_session(onnx, all_threads), names)
    check_parity(torch_run, ort1, names, cat, num)
    scorer1 = OnnxScorer(champ.version_dir, threads=1)
    scorer_all = OnnxScorer(champ.version_dir, threads=all_threads)
    # single-row frames cut beforehand: a caller already holds its request's frame
    frames = [(test.iloc[[i]],) for i in range(min(len(test), args.warmup + args.calls))]

    # batch 1, one thread each
    torch.set_num_threads(1)
    rows1 = [(cat[r:r + 1], num[r:r + 1]) for r in range(len(cat))]  # views, no copies
    b1 = take_turns({
        "torch": lambda s, k: time_calls(torch_run, rows1, s, k),
        "ort": lambda s, k: time_calls(ort1, rows1, s, k),
        "scorer": lambda s, k: time_calls(scorer1.predict, frames, s, k),
    }, args.calls, args.rounds, args.warmup)
    stages = scorer_stages(scorer1, frames, min(args.calls, 500))

    # big batches, all cores each; rows tiled when the test split is smaller than a batch
    torch.set_num_threads(all_threads)
    idx = np.resize(np.arange(len(test)), args.batch * 4)
    enc = [(cat[idx[j:j + args.batch]], num[idx[j:j + args.batch]]) for j in range(0, len(idx), args.batch)]
    raw = [(test.iloc[idx[j:j + args.batch]],) for j in range(0, len(idx), args.batch)]
    bb = take_turns({
        "torch": lambda s, k: time_calls(torch_run, enc, s, k),
        "ort": lambda s, k: time_calls(ort_all, enc, s, k),
        "scorer": lambda s, k: time_calls(scorer_all.predict, raw, s, k),
    }, args.repeats, args.rounds, 2)

    labels = {"torch": f"torch eager ({device.type})", "ort": "onnxruntime", "scorer": "OnnxScorer.predict (frame)"}
    rows = []
    for k, label in labels.items():
        lat = latency_summary(b1[k])
        rows.append({"model": champ.name, "engine": label, "p50": lat["p50"], "p99": lat["p99"],
                     "rows_s": statistics.median(args.batch / s for s in bb[k])})
    return rows, stages


# ----------------------------------------------------------------------------- report
def markdown_table(rows: list[dict], batch: int) -> str:
    lines = [f"| model | engine | batch 1 p50 µs | batch 1 p99 µs | batch {batch} rows/s | p50 vs torch "
             "| rows/s vs torch |",
             "|---|---|---:|---:|---:|---:|---:|"]
    torch_rows = {r["model"]: r for r in rows if r["engine"].startswith("torch")}
    for r in rows:
        t = torch_rows[r["model"]]
        ratio = ("", "") if r is t else (f"{r['p50'] / t['p50']:.2f}x", f"{r['rows_s'] / t['rows_s']:.2f}x")
        lines.append(f"| {r['model']} | {r['engine']} | {r['p50']:,.0f} | {r['p99']:,.0f} | {r['rows_s']:,.0f} | "
                     f"{ratio[0]} | {ratio[1]} |")
    return "\n".join(lines)


def report(rows: list[dict], stages: dict[str, dict[str, float]], batch: int) -> str:
    # a busy neighbour shows in the load first: p99 then measures its time slices, not the model
    load = f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    out = [load, "", markdown_table(rows, batch), ""]
    for r in rows:
        if r["engine"] == "onnxruntime":
            met = "met" if r["p99"] < TARGET_P99_US else "NOT met"
            out.append(f"target batch-1 p99 < {TARGET_P99_US:.0f} µs, onnxruntime on encoded inputs, {r['model']}: "
                       f"{met} (p99 {r['p99']:,.0f} µs)")
    out += ["", "OnnxScorer.predict at batch 1, p50 µs, whole call = its stages (separate loop, 1 thread):"]
    for name, st in stages.items():
        st = dict(st)
        whole = st.pop("predict")
        out.append(f"  {name}: {whole:,.0f} = " + " + ".join(f"{k} {v:,.0f}" for k, v in st.items()))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $FUNNELFLOW_DATA_DIR or ./data")
    ap.add_argument("--fresh", action="store_true", help="build small champions in a temp dir instead")
    ap.add_argument("--fresh-dir", type=Path, default=None,
                    help="with --fresh: build here and keep it; a build there holding every --models is reused "
                         "(default: a temp dir, removed)")
    ap.add_argument("--fresh-rows", type=int, default=50_000)
    ap.add_argument("--models", default=None,
                    help="with --fresh: comma-separated architectures (default: params.yaml's)")
    ap.add_argument("--calls", type=int, default=2000, help="timed batch-1 calls per engine")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20, help="timed big-batch calls per engine")
    ap.add_argument("--rounds", type=int, default=4, help="alternating blocks the calls are split into")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for big batches")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch side only")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    if args.models and not args.fresh:
        raise SystemExit("--models needs --fresh: data/ holds one torch model, the champion's")

    tmp, threads_before = None, torch.get_num_threads()
    try:
        if args.fresh:
            from flows.params import load_params

            root = args.fresh_dir or Path(tmp := tempfile.mkdtemp(prefix="serving-"))
            models = args.models.split(",") if args.models else [load_params().model.name]
            champs = reuse_fresh(root, models) or build_fresh(root, models, args.fresh_rows, epochs=1)
        else:
            champs = [find_champion(args.data_dir or Paths.default().root)]

        import onnxruntime as ort

        print(f"torch {torch.__version__} ({device}), onnxruntime {ort.__version__}; batch 1: 1 thread each, "
              f"{args.calls} calls after {args.warmup} warm-up; batch {args.batch}: {args.threads} threads, "
              f"median of {args.repeats}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
        rows, stages = [], {}
        for champ in champs:
            r, stages[champ.name] = bench_model(champ, args, device, args.threads)
            rows += r
            print(f"{champ.name} ({champ.version_dir}): done", flush=True)
        print(report(rows, stages, args.batch))
    finally:
        torch.set_num_threads(threads_before)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
