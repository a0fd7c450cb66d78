import hashlib
import json
import os

import pytest

from flows.registry import Registry, RegistryError
from models.export import FORMAT_VERSION


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(tmp_path, name, payload):
    """A bundle in the export layout: files listed with their sha256 in bundle.json."""
    d = tmp_path / name
    d.mkdir()
    files = {"model.onnx": payload.encode(), "preprocess.json": b"{}"}
    for f, data in files.items():
        (d / f).write_bytes(data)
    (d / "bundle.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "model_sha256": _sha(payload.encode()),
                                               "files": {f: _sha(data) for f, data in files.items()}}))
    rec = tmp_path / f"{name}-metrics.json"
    rec.write_text(json.dumps({"click/auc": 0.7}))
    return d, {"metrics.json": rec}


def _release(payload):
    return {"model_sha256": _sha(payload.encode())}


def test_promote_moves_pointer_and_keeps_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.champion() is None
    b1, r1 = _bundle(tmp_path, "b1", "one")
    b2, r2 = _bundle(tmp_path, "b2", "two")
    assert reg.promote(b1, r1, {"model": "mmoe"})["version"] == "v0001"
    p2 = reg.promote(b2, r2, {"model": "esmm"})
    assert p2["promoted"]
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


def _three(tmp_path):
    reg = Registry(tmp_path / "reg")
    for n in ("b1", "b2", "b3"):
        b, r = _bundle(tmp_path, n, n)
        reg.promote(b, r, _release(n))
    return reg


@pytest.mark.parametrize("name", ["model.onnx", "preprocess.json", "bundle.json", "metrics.json"])
def test_a_changed_file_of_the_champion_is_refused_with_its_name(tmp_path, name):
    """Every file is checked when a version is loaded: bundle files against bundle.json, bundle.json
    (the anchor) and the records against release.json."""
    reg = _three(tmp_path)
    path = reg.versions / "v0003" / name
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(RegistryError) as err:
        reg.champion_dir()
    assert str(path) in str(err.value) and "sha256" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RegistryError, match="v0003"):
        reg.rollback(to="v0003")  # a damaged version is not served again either
    assert reg.rollback(to="v0002")["version"] == "v0002"


def test_a_missing_file_of_the_champion_is_refused(tmp_path):
    reg = _three(tmp_path)
    (reg.versions / "v0003" / "preprocess.json").unlink()
    with pytest.raises(RegistryError, match=r"preprocess\.json"):
        reg.champion_dir()


@pytest.mark.parametrize("to", ["../x", "/etc", "v3", "v0003/../v0001", "V0001", "", "v00001"])
def test_rollback_accepts_only_version_names(tmp_path, to):
    reg = _three(tmp_path)
    with pytest.raises(RegistryError, match="not a version name like v0001") as err:
        reg.rollback(to=to)
    assert "known: v0001, v0002, v0003" in str(err.value)
    assert reg.champion()["version"] == "v0003"


def test_a_symlinked_version_is_not_a_version(tmp_path):
    reg = _three(tmp_path)
    outside = tmp_path / "elsewhere"
    (reg.versions / "v0002").rename(outside)
    os.symlink(outside, reg.versions / "v0002")
    assert reg.list_versions() == ["v0001", "v0003"]
    with pytest.raises(RegistryError, match="does not exist in"):
        reg.rollback(to="v0002")
    assert reg.rollback()["version"] == "v0001"  # the previous real version


@pytest.mark.parametrize("pointer", ['{"version": "../../etc"}', "{not json", '{"no": 1}', '["v0001"]',
                                     '{"version": "v0009"}'])
def test_a_corrupt_champion_pointer_is_one_line_and_rollback_to_repairs_it(tmp_path, pointer):
    reg = _three(tmp_path)
    (reg.root / "champion.json").write_text(pointer)
    with pytest.raises(RegistryError) as err:
        reg.champion_dir()
    assert "champion.json" in str(err.value) and "known: v0001, v0002, v0003" in str(err.value)
    with pytest.raises(RegistryError):
        reg.rollback()  # "the one before" is unknown: --to is the way out
    assert reg.rollback(to="v0002")["previous"] is None
    assert reg.champion()["version"] == "v0002"


def test_the_champions_model_is_not_promoted_again(tmp_path):
    """A rerun with nothing changed: same model -> no new version, no history line."""
    reg = Registry(tmp_path / "reg")
    b1, r1 = _bundle(tmp_path, "b1", "one")
    reg.promote(b1, r1, _release("one"))
    again = reg.promote(b1, r1, _release("one"))
    assert again["version"] == "v0001" and again["promoted"] is False
    assert reg.list_versions() == ["v0001"] and len(reg.history()) == 1
    b2, r2 = _bundle(tmp_path, "b2", "two")
    assert reg.promote(b2, r2, _release("two"))["version"] == "v0002"
