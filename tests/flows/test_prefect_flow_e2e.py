"""The Prefect flow end to end on small generated data, on a real (ephemeral) Prefect API."""
import json

import pytest
import yaml

pytestmark = pytest.mark.e2e


@pytest.fixture()
def small_params_file(tmp_path, fast_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(fast_params.model_dump(mode="json"), sort_keys=False))
    return path


def test_flow_runs_the_whole_loop_with_artifacts_and_caching(tmp_path, small_params_file, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import retrain
    from flows.registry import Registry

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    data = tmp_path / "data"
    with prefect_test_harness(server_startup_timeout=90):
        result = retrain(params_path=str(small_params_file), data_dir=str(data))
        assert result["champion"] == "v0001"
        assert Registry(data / "registry").champion()["version"] == "v0001"
        for key in ("metrics", "gate", "data_docs"):
            assert (data / result[key].split(str(data) + "/")[1]).exists(), key

        # Artifacts: validation summary, metrics table, gate decision.
        import anyio

        async def artifact_keys():
            async with get_client() as client:
                return {a.key for a in await client.read_artifacts()}

        keys = anyio.run(artifact_keys)
        assert {"validation-summary", "test-metrics", "gate-decision"} <= keys

        # The steps' own log lines (the `funnelflow` logger: steps, epochs) are in the run's logs.
        async def log_messages():
            async with get_client() as client:
                return [log.message for log in await client.read_logs()]

        assert any("step train: start" in m for m in anyio.run(log_messages))

        # Second run on unchanged data and params: the data steps come from the cache (no rewrite),
        # training is skipped, and the retrained-equal candidate is blessed again.
        ts_mtime = (data / "training_set" / "train.parquet").stat().st_mtime_ns
        model_mtime = (data / "model" / "model.pt").stat().st_mtime_ns
        second = retrain(params_path=str(small_params_file), data_dir=str(data))
        assert (data / "training_set" / "train.parquet").stat().st_mtime_ns == ts_mtime
        assert (data / "model" / "model.pt").stat().st_mtime_ns == model_mtime
        assert second["champion"] == "v0002"


def test_flow_fails_on_a_failed_gate_and_keeps_no_champion(tmp_path, fast_params, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.gate import GateFailed
    from flows.params import Bound
    from flows.pipeline import retrain

    strict = fast_params.model_copy(update={"gate": fast_params.gate.model_copy(
        update={"absolute": [Bound(metric="click/auc", op=">=", value=0.999)]})})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(strict.model_dump(mode="json"), sort_keys=False))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    with prefect_test_harness(server_startup_timeout=90):
        with pytest.raises(GateFailed, match="click/auc"):
            retrain(params_path=str(path), data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data" / "registry" / "champion.json").exists()
    assert not (tmp_path / "data" / "bundle").exists()
    blessing = json.loads((tmp_path / "data" / "gate" / "blessing.json").read_text())
    assert blessing["blessed"] is False
