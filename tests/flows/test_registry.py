import json

import pytest

from flows.registry import Registry, RegistryError


def _bundle(tmp_path, name, payload):
    d = tmp_path / name
    d.mkdir()
    (d / "bundle.json").write_text(json.dumps({"payload": payload}))
    (d / "model.onnx").write_bytes(payload.encode())
    rec = tmp_path / f"{name}-metrics.json"
    rec.write_text(json.dumps({"click/auc": 0.7}))
    return d, {"metrics.json": rec}


def test_promote_moves_pointer_and_keeps_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.champion() is None
    b1, r1 = _bundle(tmp_path, "b1", "one")
    b2, r2 = _bundle(tmp_path, "b2", "two")
    assert reg.promote(b1, r1, {"model": "mmoe"})["version"] == "v0001"
    p2 = reg.promote(b2, r2, {"model": "esmm"})
    assert p2["version"] == "v0002" and p2["previous"] == "v0001"
    assert reg.list_versions() == ["v0001", "v0002"]
    assert (reg.champion_dir() / "model.onnx").read_bytes() == b"two"
    assert json.loads((reg.champion_dir() / "release.json").read_text())["previous"] == "v0001"
    assert reg.champion_metrics() == {"click/auc": 0.7}


def test_failed_verification_leaves_champion_and_no_partial_version(tmp_path):
    reg = Registry(tmp_path / "reg")
    b1, r1 = _bundle(tmp_path, "b1", "one")
    reg.promote(b1, r1, {})
    b2, r2 = _bundle(tmp_path, "b2", "broken")

    def verify(d):
        raise RuntimeError("cannot score")

    with pytest.raises(RuntimeError, match="cannot score"):
        reg.promote(b2, r2, {}, verify=verify)
    assert reg.champion()["version"] == "v0001"
    assert [p.name for p in reg.versions.iterdir()] == ["v0001"]


def test_crash_before_pointer_move_keeps_old_champion(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    b1, r1 = _bundle(tmp_path, "b1", "one")
    reg.promote(b1, r1, {})
    before = (tmp_path / "reg" / "champion.json").read_text()
    b2, r2 = _bundle(tmp_path, "b2", "two")
    monkeypatch.setattr(Registry, "_set_pointer", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        reg.promote(b2, r2, {})
    assert (tmp_path / "reg" / "champion.json").read_text() == before
    assert (reg.champion_dir() / "model.onnx").read_bytes() == b"one"


def test_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError):
        reg.rollback()
    for n in ("b1", "b2", "b3"):
        b, r = _bundle(tmp_path, n, n)
        reg.promote(b, r, {})
    assert reg.rollback()["version"] == "v0002"
    assert reg.rollback()["version"] == "v0001"
    with pytest.raises(RegistryError, match="first version"):
        reg.rollback()
    assert reg.rollback(to="v0003")["version"] == "v0003"
    with pytest.raises(RegistryError, match="does not exist"):
        reg.rollback(to="v0009")
    assert [h["event"] for h in reg.history()] == ["promote"] * 3 + ["rollback"] * 3
