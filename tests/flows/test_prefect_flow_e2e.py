"""The Prefect flow end to end on small generated data, on a real (ephemeral) Prefect API: artifacts,
caching, the promotion and refusal events, and a refusal's notification to a local webhook receiver."""
import json
import time

import pytest
import yaml

pytestmark = pytest.mark.e2e


def _events(name, expect=1, timeout=30.0):
    """The events named ``name`` stored by the current Prefect API, once ``expect`` of them are there
    (events reach the API's store asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(EventFilter(event=EventNameFilter(name=[name])), limit=50).events
            if len(events) >= expect or time.time() > deadline:
                return events
            time.sleep(0.5)


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

        # The promotion is an event on the model's resource, related to the run, with its test metrics.
        (promoted,) = _events("funnelflow.model.promoted")
        assert promoted.resource.id == "funnelflow.model.v0001"
        assert promoted.payload["previous"] is None and promoted.payload["path"] == result["champion_path"]
        assert promoted.payload["metrics"] == json.loads((data / result["metrics"].split(str(data) + "/")[1])
                                                         .read_text())
        blessing = json.loads((data / "gate" / "blessing.json").read_text())
        assert promoted.resource["funnelflow.model_sha256"] == blessing["candidate"]["model_sha256"]
        assert any(r.id.startswith("prefect.flow-run.") for r in promoted.related)

        # Second run on unchanged data and params: the data steps come from the cache (no rewrite),
        # training is skipped, and the retrained-equal candidate is blessed again.
        ts_mtime = (data / "training_set" / "train.parquet").stat().st_mtime_ns
        model_mtime = (data / "model" / "model.pt").stat().st_mtime_ns
        second = retrain(params_path=str(small_params_file), data_dir=str(data))
        assert (data / "training_set" / "train.parquet").stat().st_mtime_ns == ts_mtime
        assert (data / "model" / "model.pt").stat().st_mtime_ns == model_mtime
        assert second["champion"] == "v0001" and second["promoted"] is False  # the same model: not promoted again


def test_a_refused_candidate_fails_the_flow_notifies_and_emits_refused(tmp_path, fast_params, monkeypatch, webhook,
                                                                      save_webhook_block):
    from prefect.testing.utilities import prefect_test_harness

    from flows.gate import GateFailed
    from flows.overrides import GateOverrides, Overrides
    from flows.params import Bound
    from flows.pipeline import retrain

    url, received = webhook
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect_home"))
    data = tmp_path / "data"
    with prefect_test_harness(server_startup_timeout=90):
        path = tmp_path / "params.yaml"
        raw = fast_params.model_dump(mode="json") | {"notify": {"block": save_webhook_block(url)}}
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        # The deployment's typed overrides set the bound the file does not have.
        strict = Overrides(gate=GateOverrides(absolute=[Bound(metric="click/auc", op=">=", value=0.999)]))
        with pytest.raises(GateFailed, match="click/auc"):
            retrain(params_path=str(path), data_dir=str(data), overrides=strict)
        (refused,) = _events("funnelflow.model.refused")
    assert not (data / "registry" / "champion.json").exists()
    assert not (data / "bundle").exists()
    blessing = json.loads((data / "gate" / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert [c["rule"] for c in blessing["checks"]] == [">= 0.999"]  # the override, not params.yaml's bounds

    # The notification: the run, the gate's one-line cause, where the gate record is.
    assert len(received) == 1, received
    assert received[0]["subject"].startswith("funnelflow: candidate refused (")
    lines = received[0]["body"].splitlines()
    assert "refused its candidate: the gate refused the candidate: 1 of 1 checks failed: click/auc >= 0.999" in lines[0]
    assert lines[1] == f"gate record: {data / 'gate' / 'blessing.md'} (checks: {data / 'gate' / 'blessing.json'})"

    # The refusal event: the candidate's model hash, the failed checks, the record.
    sha = blessing["candidate"]["model_sha256"]
    assert refused.resource.id == f"funnelflow.candidate.{sha[:12]}"
    assert refused.payload["failed"] == ["click/auc"] and refused.payload["checks"] == blessing["checks"]
    assert refused.payload["record"] == str(data / "gate" / "blessing.md")
