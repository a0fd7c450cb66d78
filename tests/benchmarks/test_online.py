"""benchmarks/online.py: its arithmetic, its request sampling, and one short run of its core on SQLite
(both real servers as subprocesses, real loopback HTTP). No timing assertions: only that every cell was
measured on answered requests and the table has its shape."""
import json
import shutil

import pytest

from benchmarks import online
from flows import steps
from flows.params import Paths
from flows.registry import Registry


def test_stage_shares_are_differences_of_the_histogram_sums():
    before = {"fetch": 1.0, "fill": 2.0, "model": 3.0, "request": 10.0, "count": 100}
    after = {"fetch": 1.4, "fill": 2.1, "model": 3.2, "request": 11.0, "count": 150}
    got = online.shares(before, after)
    assert got == pytest.approx({"fetch": 0.4, "fill": 0.1, "model": 0.2, "rest": 0.3, "server_ms": 20.0})
    assert online.shares(after, after) == {}  # nothing served in the window: no shares, not a division by 0


def _row(store, n, server, p50, p99, run=1):
    return {"store": store, "candidates": n, "server": server, "p50": p50, "p99": p99, "run": run}


def test_targets_compare_the_whole_score_with_feasts_fetch():
    lines = online.targets([_row("redis", 100, "funnelflow serve", 4.0, 12.0),
                            _row("redis", 100, "feast serve", 5.0, 9.0),
                            _row("sqlite", 1, "funnelflow serve", 1.0, 2.0),
                            _row("sqlite", 1, "feast serve", 3.0, 4.0)])
    assert lines[0] == "target 1 x 100 candidates p99 < 10 ms on redis: NOT met (p99 12.00 ms)"
    assert "redis 1 x 100: whole score NOT faster" in lines[1]  # p50 faster, p99 not: not faster
    assert "sqlite 1 x 1: whole score faster" in lines[2] and "(0.33x)" in lines[2]


def test_the_latency_target_is_met_only_in_every_run_and_each_run_is_compared_with_its_own():
    rows = [_row("redis", 100, "funnelflow serve", 4.0, 6.0, 1), _row("redis", 100, "feast serve", 90.0, 99.0, 1),
            _row("redis", 100, "funnelflow serve", 5.0, 10.5, 2), _row("redis", 100, "feast serve", 4.0, 99.0, 2)]
    lines = online.targets(rows)
    assert lines[0] == ("target 1 x 100 candidates p99 < 10 ms on redis: NOT met (p99 6.00, 10.50 ms; met in 1 of 2 "
                        "runs)")
    assert "redis 1 x 100 (run 1): whole score faster" in lines[1]
    assert "redis 1 x 100 (run 2): whole score NOT faster" in lines[2]  # its own run's Feast p50 was lower
    table = online.markdown_table([{**r, "requests": 1, "errors": {}, "rps": 1.0, "shares": {}} for r in rows])
    assert table.splitlines()[0].startswith("| store | candidates | run | server |")
    assert [line.split(" | ")[2] for line in table.splitlines()[2:]] == ["1", "1", "2", "2"]


@pytest.fixture(scope="module")
def champion_data(pipeline_data, tmp_path_factory, params):
    """The pipeline's data dir, copied, with a small champion promoted by the steps. Feast's registry is
    not re-applied: only its online store is read here, and the copied load record makes the
    benchmark's materialize a no-op."""
    paths = Paths(tmp_path_factory.mktemp("online") / "data")
    shutil.copytree(pipeline_data.root, paths.root)
    quick = params.model_copy(update={
        "train": params.train.model_copy(update={"epochs": 1, "batch_size": 512}),
        "model": params.model.model_copy(update={"hidden": [16], "tower": [8]}),
        "gate": params.gate.model_copy(update={"absolute": [], "change": []}),
    })
    steps.train(quick, paths, progress=False)
    for step in (steps.evaluate, steps.score_champion, steps.gate, steps.export, steps.promote):
        step(quick, paths)
    assert Registry(paths.registry).champion() is not None
    return paths


@pytest.mark.e2e
def test_both_bodies_name_the_same_test_split_rows(champion_data, params):
    ours, feast = online.sample_requests(champion_data, params, candidates=5, pool=4, seed=1)
    assert len(ours) == len(feast) == 4
    test = online.pd.read_parquet(champion_data.training_set / "test.parquet")
    for a, b in zip(map(json.loads, ours), map(json.loads, feast), strict=True):
        assert b["entities"] == {"user_id": [a["user_id"]] * 5, "item_id": a["items"]}
        assert a["user_id"] in set(test["user_id"]) and set(a["items"]) <= set(test["item_id"])
        assert set(a["context"]) == {"position", "device", "hour"}


@pytest.mark.e2e
def test_a_short_run_on_sqlite_measures_every_cell(champion_data, capsys):
    rows = online.main(["--data-dir", str(champion_data.root), "--stores", "sqlite", "--candidates", "1,10",
                        "--seconds", "0.5", "--warmup", "0.2", "--pool", "8", "--repeats", "2"])
    assert [(r["candidates"], r["run"], r["server"]) for r in rows] == [
        (n, run, server) for n in (1, 10) for run in (1, 2) for server in ("funnelflow serve", "feast serve")]
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == {}, r
        assert 0 < r["p50"] <= r["p99"] and r["rps"] > 0
    for r in rows[::2]:  # ours: the stage sums moved by what the window served
        assert {"fetch", "fill", "model", "rest", "server_ms"} <= set(r["shares"])
        assert all(r["shares"][s] > 0 for s in ("fetch", "fill", "model"))
        assert 0 < r["shares"]["server_ms"] < r["mean"]  # the server's time is inside the client's
    assert rows[1]["shares"] == {}
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| sqlite |")]
    assert len(table) == 8 and all(line.count("|") == 14 for line in table)  # with the run column
    assert "load average" in out and "sum(range(10**6))" in out and "sqlite 1 x 10 (run 2): whole score" in out
