"""The flow's cache keys: a stage's params sections and its deps, as dvc.yaml lists them."""
from flows.params import Paths
from flows.pipeline import cache_key, outputs_present


def test_cache_key_follows_deps_and_params_but_not_bytecode(params, tmp_path):
    paths = Paths(tmp_path / "data")
    paths.model.mkdir(parents=True)
    (paths.model / "model.pt").write_bytes(b"a")
    key = cache_key("evaluate", params, paths)
    cache = paths.model / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"compiled")
    assert cache_key("evaluate", params, paths) == key
    (paths.model / "model.pt").write_bytes(b"bb")
    assert cache_key("evaluate", params, paths) != key
    # A train param changes train's key only: evaluate's stage lists no params.
    other = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 99})})
    assert cache_key("train", other, paths) != cache_key("train", params, paths)
    assert cache_key("evaluate", other, paths) == cache_key("evaluate", params, paths)


def test_outputs_present_checks_outs_metrics_and_plots(params, tmp_path):
    paths = Paths(tmp_path / "data")
    paths.evaluation.mkdir(parents=True)
    (paths.evaluation / "metrics.json").write_text("{}")
    assert not outputs_present("evaluate", paths)  # plots missing
    (paths.evaluation / "plots").mkdir()
    assert not outputs_present("evaluate", paths)  # the record of what was evaluated missing
    (paths.evaluation / "evaluated.json").write_text("{}")
    assert outputs_present("evaluate", paths)


def test_cache_key_hashes_content_not_size_and_mtime(params, tmp_path):
    """The same bytes rewritten hit the cache; other bytes of the same size and mtime miss it."""
    import os

    paths = Paths(tmp_path / "data")
    paths.model.mkdir(parents=True)
    model = paths.model / "model.pt"
    model.write_bytes(b"aaaa")
    key = cache_key("evaluate", params, paths)
    model.write_bytes(b"aaaa")
    assert cache_key("evaluate", params, paths) == key
    st = model.stat()
    model.write_bytes(b"bbbb")
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache_key("evaluate", params, paths) != key


def test_the_ingest_key_follows_the_source_folder(params, tmp_path):
    """`run --source A` then `run --source B` must ingest B: the key holds the source's path and content,
    through the very cache_key_fn the flow's ingest task uses."""
    from flows.pipeline import T

    paths = Paths(tmp_path / "data")
    a, b = tmp_path / "A" / "dt=2026-09-01", tmp_path / "B" / "dt=2026-09-01"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "impressions.parquet").write_bytes(b"same bytes")
    key_fn = T["ingest"].cache_key_fn

    def key(source):
        return key_fn(None, {"params": params, "paths": paths, "source": source})

    assert key(a.parent) != key(b.parent)  # same content, another folder
    before = key(a.parent)
    (a / "impressions.parquet").write_bytes(b"same bytes")
    assert key(a.parent) == before  # rewritten, same bytes: a hit
    (a / "impressions.parquet").write_bytes(b"new day's rows")
    assert key(a.parent) != before
    (a.parent / "dt=2026-09-02").mkdir()
    (a.parent / "dt=2026-09-02" / "impressions.parquet").write_bytes(b"a day landed")
    assert key(a.parent) not in (before, key(b.parent))
