"""funnelflow vs torch-rechub (the PyPI peer): training samples/s and test AUC, same data, same sizes.

    make bench-setup   # torch-rechub into .venv from requirements-bench.txt (the `bench` extra)
    python -m benchmarks.peer_rechub --rows 200000 --epochs 2 --batch-size 4096 --repeats 3 --device auto [--cpu-bf16]

Both frameworks get identical arrays: funnelflow's Preprocessor (fitted on the train rows) label-encodes
12 categorical columns and standardises 18 numeric ones of a generated funnel with planted signal in
both tasks; train/validation/test are the same 80/10/10 rows. Tasks: click, conversion (binary).
Per model and repeat, each framework trains a fresh network for ``--epochs`` epochs (Adam, same lr,
batch size, seed, torch threads); the validation mean AUC picks the best epoch, which is scored on test.

Timed: the training loop only, each framework's own: funnelflow ``models.train.run_epoch`` (in-memory
tensors, permutation batches), torch-rechub ``MTLTrainer.train_one_epoch`` over the DataLoader that its
``DataGenerator`` builds (what ``MTLTrainer.fit`` runs, minus its per-epoch validation and checkpoint).
Medians over ``--repeats`` (repeat r: seed + r on both sides). "rechub loader share": the time its
DataLoader alone takes to yield an epoch's batches, over its training epoch time.

Losses are each framework's own: funnelflow's paper losses (shared_bottom/mmoe/ple: click BCE + BCE of
conversion given click on clicked rows; esmm: CTR + CTCVR BCE), torch-rechub's (mean of per-label BCE
over all rows; ESMM: CTR + CTCVR BCE). Conversion AUC is therefore scored on the one quantity both
predict, the unconditional p(conversion) over all impressions: funnelflow's chained ``p_conversion``
(p_click * p_conv|click; for ESMM its pCTCVR), torch-rechub's conversion output (for ESMM its pCTCVR).

Architectures (``ModelConfig`` mapped to torch-rechub's arguments, parameter counts printed):
* embedding dim, bottom/expert ``hidden``, ``tower`` and expert counts are the same. torch-rechub's MLP
  puts a BatchNorm1d after every Linear (gates too); funnelflow runs with ``batch_norm: true``, which does
  the same, so the dense parameter counts are equal (``--no-batch-norm``: funnelflow's default, no
  BatchNorm, the only dense difference then).
* PLE: torch-rechub gives every level the same expert widths, so both sides run len(hidden) levels of
  width hidden[0] (funnelflow's default [128, 64] narrows the second level; not expressible there).
* ESMM: torch-rechub's ESMM takes sparse features only (it drops dense ones), so for ESMM both sides
  get the numeric columns as 16 train-quantile bins, i.e. 30 categorical columns and no numeric.
Targets (printed per row): funnelflow >= 3x torch-rechub samples/s, and each task's test AUC not more
than 0.005 below torch-rechub's.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version

import numpy as np
import pandas as pd
import torch

from models.config import TrainConfig
from models.metrics import roc_auc
from models.networks import MODELS as REGISTRY
from models.networks import FunnelNet, ModelConfig, build_model, parse_model_config
from models.networks.mmoe import MMoEConfig
from models.networks.ple import PLEConfig
from models.preprocess import FeatureColumns, Preprocessor
from models.tasks import TaskGraph, TaskSpec
from models.train import amp_context, make_optimizer, predict_arrays, resolve_device, run_epoch, to_device

TASKS = TaskGraph(tasks=[TaskSpec(name="click", kind="binary"),
                         TaskSpec(name="conversion", kind="binary", parent="click")])
MODELS = ["shared_bottom", "esmm", "mmoe", "ple"]
N_USERS, N_ITEMS, CTX_CARDS, N_NUM, ESMM_BINS = 20_000, 5_000, [20 + 30 * k for k in range(10)], 18, 16
SPEED_TARGET, AUC_TOLERANCE = 3.0, 0.005


# ----------------------------------------------------------------------------- data
def funnel_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """synthetic_frame's layout (user_id, item_id, 10 contexts, 18 numeric) with signal in both tasks:
    user, item and context effects plus numeric terms (one interaction) drive click, and a different
    mix drives conversion given click, so conversion AUC measures more than the click model."""
    rng, fx = np.random.default_rng(seed), np.random.default_rng(1234)  # fx: the effects, fixed
    user, item = rng.integers(0, N_USERS, rows), rng.integers(0, N_ITEMS, rows)
    ctx = [rng.integers(0, c, rows) for c in CTX_CARDS]
    x = rng.normal(size=(rows, N_NUM))
    df = pd.DataFrame({"user_id": user, "item_id": item} | {f"ctx__c{k}": c for k, c in enumerate(ctx)}
                      | {f"user_activity__n{k}": x[:, k] for k in range(N_NUM)})
    u, i = fx.normal(0, 0.8, N_USERS), fx.normal(0, 0.8, N_ITEMS)
    c0, c1 = fx.normal(0, 0.5, CTX_CARDS[0]), fx.normal(0, 0.5, CTX_CARDS[1])
    click_logit = -1.2 + u[user] + 0.8 * i[item] + c0[ctx[0]] + 0.8 * x[:, 0] - 0.5 * x[:, 1] + 0.4 * x[:, 2] * x[:, 3]
    conv_logit = -1.0 + 0.8 * i[item] - 0.5 * u[user] + c1[ctx[1]] + 0.7 * x[:, 4] + 0.5 * np.abs(x[:, 5])
    click = rng.random(rows) < 1 / (1 + np.exp(-click_logit))
    conv = click & (rng.random(rows) < 1 / (1 + np.exp(-conv_logit)))
    df["click"], df["conversion"] = click.astype(np.int8), conv.astype(np.int8)
    return df


@dataclass
class Split:
    """One split, encoded."""

    cat: np.ndarray  # [N, C] int64 codes (0 = OOV)
    num: np.ndarray  # [N, F] float32, standardised
    y: np.ndarray    # [N, 2] float32: click, conversion


@dataclass
class Data:
    """The encoded splits and their column layout."""

    cat_names: list[str]
    num_names: list[str]
    cards: list[int]
    train: Split
    valid: Split
    test: Split


def encode(df: pd.DataFrame, min_count: int) -> Data:
    """80/10/10 split by row (rows are i.i.d.); the Preprocessor is fitted on the train rows only."""
    labels = [t.name for t in TASKS.tasks]
    feats = [c for c in df if c not in labels]
    cols = FeatureColumns(categorical=[c for c in feats if df[c].dtype.kind == "i"],
                          numeric=[c for c in feats if df[c].dtype.kind == "f"])
    n_train, n_valid = int(0.8 * len(df)), int(0.1 * len(df))
    parts = [df.iloc[:n_train], df.iloc[n_train:n_train + n_valid], df.iloc[n_train + n_valid:]]
    pre = Preprocessor.fit(parts[0], cols, min_count)
    splits = [Split(*pre.encode(p), p[labels].to_numpy(np.float32)) for p in parts]
    return Data(cols.categorical, cols.numeric, pre.cardinalities, *splits)


def esmm_view(data: Data, bins: int = ESMM_BINS) -> Data:
    """Numeric columns as train-quantile bins appended to the categorical ones (torch-rechub's ESMM
    takes sparse features only; both frameworks get this same input for ESMM)."""
    edges = [np.quantile(data.train.num[:, k], np.linspace(0, 1, bins + 1)[1:-1]) for k in range(len(data.num_names))]

    def binned(s: Split) -> Split:
        codes = np.stack([np.searchsorted(e, s.num[:, k]) for k, e in enumerate(edges)], 1).astype(np.int64)
        return Split(np.hstack([s.cat, codes]), np.zeros((len(s.cat), 0), np.float32), s.y)

    return Data(data.cat_names + [f"{c}__bin" for c in data.num_names], [], data.cards + [bins] * len(edges),
                binned(data.train), binned(data.valid), binned(data.test))


# ----------------------------------------------------------------------------- models
def model_config(name: str, args: argparse.Namespace) -> ModelConfig:
    """Funnelflow's config for ``name`` at the benchmark's sizes (PLE: uniform level width, see top)."""
    hidden = [args.hidden[0]] * len(args.hidden) if name == "ple" else list(args.hidden)
    knobs = {"name": name, "embedding_dim": args.embedding_dim, "hidden": hidden, "tower": list(args.tower),
             "dropout": 0.0, "batch_norm": args.batch_norm}
    if "experts" in REGISTRY[name].config_class.model_fields:
        knobs["experts"] = args.experts
    return parse_model_config(knobs)


def rechub_model(cfg: ModelConfig, data: Data) -> torch.nn.Module:
    """torch-rechub's model with the same sizes as funnelflow's ``cfg``."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE, PLE, SharedBottom

    sparse = [SparseFeature(n, vocab_size=c, embed_dim=cfg.embedding_dim)
              for n, c in zip(data.cat_names, data.cards, strict=True)]
    features = sparse + [DenseFeature(n) for n in data.num_names]
    types, towers = ["classification"] * len(TASKS.tasks), [{"dims": cfg.tower}] * len(TASKS.tasks)
    if cfg.name == "shared_bottom":
        return SharedBottom(features, types, bottom_params={"dims": cfg.hidden}, tower_params_list=towers)
    if isinstance(cfg, MMoEConfig):
        return MMOE(features, types, cfg.experts, expert_params={"dims": cfg.hidden}, tower_params_list=towers)
    if isinstance(cfg, PLEConfig):  # funnelflow: k = experts // 2 task-specific experts per task and k shared
        k = max(1, cfg.experts // 2)
        return PLE(features, types, n_level=len(cfg.hidden), n_expert_specific=k, n_expert_shared=k,
                   expert_params={"dims": cfg.hidden[:1]}, tower_params_list=towers)
    if cfg.name == "esmm":  # a tower per task = funnelflow's per-task hidden MLP + tower (+ the output layer)
        assert not data.num_names, "torch-rechub's ESMM takes sparse features only: use esmm_view()"
        item = [f for f in sparse if f.name == "item_id"]
        return ESMM([f for f in sparse if f.name != "item_id"], item, cvr_params={"dims": cfg.hidden + cfg.tower},
                    ctr_params={"dims": cfg.hidden + cfg.tower})
    raise ValueError(f"no torch-rechub counterpart mapped for {cfg.name!r}")


def funnelflow_model(cfg: ModelConfig, data: Data) -> FunnelNet:
    return build_model(TASKS, data.cards, len(data.num_names), cfg)


def param_counts(net: torch.nn.Module) -> tuple[int, int]:
    """(embedding, dense) parameter counts; embeddings are identical by construction, dense shows the
    architecture (funnelflow: one table ``input.embedding``; torch-rechub: ``embedding.embed_dict``)."""
    emb = sum(p.numel() for n, p in net.named_parameters() if n.startswith(("input.embedding.", "embedding.")))
    return emb, sum(p.numel() for p in net.parameters()) - emb


# ----------------------------------------------------------------------------- one training run each
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FunnelflowRun:
    """funnelflow's training path: tensors in memory (on the device), ``run_epoch`` per epoch."""

    def __init__(self, cfg: ModelConfig, data: Data, args: argparse.Namespace, device: torch.device, seed: int,
                 cpu_bf16: bool = False):
        torch.manual_seed(seed)
        self.cfg, self.device, self.batch_size = cfg, device, args.batch_size
        self.net = funnelflow_model(cfg, data).to(device)
        self.opt = make_optimizer(self.net, TrainConfig(lr=args.lr, batch_size=args.batch_size), device)
        self.amp = args.amp
        self.amp_ctx, amp_dtype = amp_context(device, args.amp, cpu_bf16)  # TrainConfig.amp / .cpu_bf16
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.gen = torch.Generator().manual_seed(seed)
        self.cat, self.num, self.y = (to_device(a, device) for a in (data.train.cat, data.train.num, data.train.y))

    def train_epoch(self) -> float:
        sync(self.device)
        _, seconds = run_epoch(self.net, self.opt, self.cat, self.num, self.y, TASKS, self.cfg, self.batch_size,
                               self.gen, self.amp_ctx, self.scaler)
        return seconds

    def predict(self, s: Split) -> np.ndarray:
        out = predict_arrays(self.net, torch.from_numpy(s.cat), torch.from_numpy(s.num), TASKS, 65536,
                             self.device, self.amp)
        return np.stack([out["p_click"], out["p_conversion"]], 1)


class RechubRun:
    """torch-rechub's path as its examples run it: DataGenerator -> DataLoader, MTLTrainer."""

    def __init__(self, cfg: ModelConfig, data: Data, args: argparse.Namespace, device: torch.device, seed: int):
        from torch_rechub.trainers import MTLTrainer
        from torch_rechub.utils.data import DataGenerator

        torch.manual_seed(seed)
        self.esmm, self.device = cfg.name == "esmm", device
        self.names = data.cat_names + data.num_names
        self.net = rechub_model(cfg, data)
        n_tasks = 3 if self.esmm else len(TASKS.tasks)  # ESMM's label order: cvr, ctr, ctcvr
        self.trainer = MTLTrainer(self.net, ["classification"] * n_tasks, n_epoch=args.epochs, device=str(device),
                                  optimizer_params={"lr": args.lr, "weight_decay": 0.0},
                                  model_path=tempfile.gettempdir())  # fit() saves there; we call train_one_epoch
        x_train, x_valid, x_test = (self.x_dict(s) for s in (data.train, data.valid, data.test))
        y_train, y_valid, y_test = (self.labels(s) for s in (data.train, data.valid, data.test))
        self.loader = DataGenerator(x_train, y_train).generate_dataloader(
            x_valid, y_valid, x_test, y_test, batch_size=args.batch_size, num_workers=args.rechub_workers)[0]

    def x_dict(self, s: Split) -> dict[str, np.ndarray]:
        columns = [*s.cat.T, *s.num.T]
        return {n: np.ascontiguousarray(c) for n, c in zip(self.names, columns, strict=True)}  # = df[n].values

    def labels(self, s: Split) -> np.ndarray:
        # ESMM: cvr label := conversion (its loss ignores it), ctr = click, ctcvr = click * conversion
        return s.y[:, [1, 0, 1]] if self.esmm else s.y

    def train_epoch(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        with quiet():  # its tqdm bar and per-epoch print would interleave with the table
            self.trainer.train_one_epoch(self.loader)
        sync(self.device)
        return time.perf_counter() - t0

    @torch.no_grad()
    def predict(self, s: Split, batch_size: int = 65536) -> np.ndarray:
        self.net.eval()
        x = {k: torch.from_numpy(v) for k, v in self.x_dict(s).items()}
        out = torch.cat([self.net({k: v[i:i + batch_size].to(self.device) for k, v in x.items()}).float().cpu()
                         for i in range(0, len(s.y), batch_size)]).numpy()
        return out[:, [1, 2]] if self.esmm else out  # ESMM outputs cvr, ctr, ctcvr


Runner = Callable[..., FunnelflowRun | RechubRun]


def runners(args: argparse.Namespace, device: torch.device) -> list[tuple[str, Runner]]:
    """(key, constructor) per contender: funnelflow in fp32; on CPU, with ``--cpu-bf16``, funnelflow
    with bf16 autocast too (``train.cpu_bf16``: same fp32 weights and Adam, bf16 GEMMs); torch-rechub."""
    out: list[tuple[str, Runner]] = [("funnelflow", FunnelflowRun)]
    if args.cpu_bf16 and device.type == "cpu":
        out.append(("funnelflow bf16", functools.partial(FunnelflowRun, cpu_bf16=True)))
    return [*out, ("rechub", RechubRun)]


@contextlib.contextmanager
def quiet():
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def task_aucs(y: np.ndarray, p: np.ndarray) -> list[float]:
    return [roc_auc(y[:, k], p[:, k]) for k in range(y.shape[1])]


def fit_and_score(run: FunnelflowRun | RechubRun, data: Data, epochs: int) -> tuple[float, list[float]]:
    """(training seconds, test AUCs of the epoch with the best validation mean AUC). Only
    ``train_epoch`` is timed; validation and the best-state copy are outside the clock."""
    seconds, best, best_state = 0.0, -np.inf, None
    for _ in range(epochs):
        seconds += run.train_epoch()
        score = float(np.mean(task_aucs(data.valid.y, run.predict(data.valid))))
        if best_state is None or score > best:
            best, best_state = score, copy.deepcopy(run.net.state_dict())
    assert best_state is not None
    run.net.load_state_dict(best_state)
    return seconds, task_aucs(data.test.y, run.predict(data.test))


def warm_up(cfg: ModelConfig, data: Data, args: argparse.Namespace, device: torch.device,
            contenders: list[tuple[str, Runner]]) -> None:
    """A throwaway epoch on two batches per framework (allocator, kernels, CUDA context), untimed."""
    n = min(len(data.train.y), 2 * args.batch_size)
    tiny = replace(data, train=Split(data.train.cat[:n], data.train.num[:n], data.train.y[:n]))
    for _, runner in contenders:
        runner(cfg, tiny, args, device, args.seed).train_epoch()


def measure(cfg: ModelConfig, data: Data, args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Per framework: median samples/s and median test AUC per task over ``--repeats`` fresh models.
    The frameworks take turns (order flipped every repeat), so background load hits both alike."""
    contenders = runners(args, device)
    warm_up(cfg, data, args, device, contenders)
    raw: dict[str, dict[str, list]] = {k: {"rate": [], "auc": []} for k, _ in contenders}
    for r in range(args.repeats):
        for key, runner in contenders[::1 if r % 2 == 0 else -1]:
            seconds, aucs = fit_and_score(runner(cfg, data, args, device, args.seed + r), data, args.epochs)
            raw[key]["rate"].append(args.epochs * len(data.train.y) / seconds)
            raw[key]["auc"].append(aucs)
    out = {k: {"rate": statistics.median(v["rate"]), "auc": np.median(np.array(v["auc"]), 0).tolist()}
           for k, v in raw.items()}
    out["rechub"]["loader_rate"] = loader_rate(cfg, data, args, device)
    return out


def loader_rate(cfg: ModelConfig, data: Data, args: argparse.Namespace, device: torch.device) -> float:
    """Rows/s of torch-rechub's training DataLoader alone (batches drawn, no model step)."""
    run = RechubRun(cfg, data, args, device, args.seed)
    t0 = time.perf_counter()
    for _ in run.loader:
        pass
    return len(data.train.y) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- report
def param_table(cfgs: dict[str, ModelConfig], views: dict[str, Data]) -> pd.DataFrame:
    rows = []
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        ff_emb, ff_dense = param_counts(funnelflow_model(cfg, views[name]))
        rh_emb, rh_dense = param_counts(rechub_model(cfg, views[name]))
        rows.append({"model": name, "embedding (ff / rechub)": f"{ff_emb:,} / {rh_emb:,}",
                     "dense funnelflow": f"{ff_dense:,}", "dense rechub": f"{rh_dense:,}",
                     "dense diff": f"{(rh_dense - ff_dense) / ff_dense:+.1%}",
                     "total diff": f"{(rh_emb + rh_dense - ff_emb - ff_dense) / (ff_emb + ff_dense):+.2%}"})
    return pd.DataFrame(rows)


def result_rows(name: str, m: dict[str, dict]) -> list[dict[str, str]]:
    """One row per funnelflow variant, each against the same torch-rechub measurement."""
    return [result_row(name + ("" if key == "funnelflow" else " (bf16)"), m[key], m["rechub"])
            for key in m if key != "rechub"]


def result_row(name: str, ff: dict, rh: dict) -> dict[str, str]:
    ratio = ff["rate"] / rh["rate"]
    d = [a - b for a, b in zip(ff["auc"], rh["auc"], strict=True)]
    speed_ok, auc_ok = ratio >= SPEED_TARGET, all(x >= -AUC_TOLERANCE for x in d)
    return {"model": name, "ff samples/s": f"{ff['rate']:,.0f}", "rechub samples/s": f"{rh['rate']:,.0f}",
            "ff/rechub": f"{ratio:.2f}x", "rechub loader share": f"{rh['rate'] / rh['loader_rate']:.0%}",
            "click AUC ff / rechub (diff)": f"{ff['auc'][0]:.4f} / {rh['auc'][0]:.4f} ({d[0]:+.4f})",
            "conv AUC ff / rechub (diff)": f"{ff['auc'][1]:.4f} / {rh['auc'][1]:.4f} ({d[1]:+.4f})",
            f">= {SPEED_TARGET:g}x": "yes" if speed_ok else "NO",
            f"AUC >= rechub - {AUC_TOLERANCE}": "yes" if auc_ok else "NO"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="generated rows (80%% train, 10%% valid, 10%% test)")
    ap.add_argument("--epochs", type=int, default=2, help="2: one epoch is only ~40 steps at 200k rows")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads, both (default: all cores)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ",".join(MODELS))
    ap.add_argument("--embedding-dim", type=int, default=16)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64], help="bottom / expert widths")
    ap.add_argument("--tower", type=int, nargs="+", default=[64])
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--no-amp", dest="amp", action="store_false",
                    help="funnelflow in fp32 on CUDA too (default: its bf16 autocast; torch-rechub has none)")
    ap.add_argument("--cpu-bf16", action="store_true",
                    help="on CPU also run funnelflow with bf16 autocast (train.cpu_bf16; for CPUs with "
                         "avx512_bf16/AMX), a second funnelflow row against the same torch-rechub runs")
    ap.add_argument("--no-batch-norm", dest="batch_norm", action="store_false",
                    help="funnelflow without BatchNorm (its default model config; torch-rechub always has it)")
    ap.add_argument("--rechub-workers", type=int, default=0, help="DataLoader workers (its default: 0)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    device = resolve_device(args.device)
    names = args.models.split(",")

    data = encode(funnel_frame(args.rows, args.seed), parse_model_config({}).min_count)
    views = {n: esmm_view(data) if n == "esmm" else data for n in names}
    cfgs = {n: model_config(n, args) for n in names}
    print(f"funnelflow vs torch-rechub {version('torch-rechub')} | torch {torch.__version__} | device={device} "
          f"threads={torch.get_num_threads()} | rows={args.rows} (train {len(data.train.y)}) epochs={args.epochs} "
          f"batch={args.batch_size} lr={args.lr} Adam | {len(data.cat_names)} categorical + {len(data.num_names)} "
          f"numeric | click rate {data.train.y[:, 0].mean():.3f}, conversion rate {data.train.y[:, 1].mean():.4f} "
          f"| funnelflow amp={args.amp and device.type == 'cuda'} cpu_bf16={args.cpu_bf16 and device.type == 'cpu'} "
          f"batch_norm={args.batch_norm} | medians of {args.repeats}\n")
    print("Parameters (embedding tables identical; dense = everything else):\n")
    print(param_table(cfgs, views).to_markdown(index=False), "\n", flush=True)

    rows = []
    for name in names:
        rows += result_rows(name, measure(cfgs[name], views[name], args, device))
        print(f"  {name}: done", flush=True)
    print("\nTraining throughput and test AUC (conversion: unconditional p(conversion) over all impressions):\n")
    print(pd.DataFrame(rows).to_markdown(index=False))
    print("\nrechub loader share: time its DataLoader alone takes to yield the epoch's batches (per-row "
          "__getitem__ + collate, no model) / its training epoch time.")


if __name__ == "__main__":
    main()
