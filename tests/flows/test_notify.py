"""A failed run of the retrain flow notifies through a Prefect notification block: the real flow on a real
(ephemeral) Prefect API, posting to a local webhook receiver. A refusal's notification and the promotion and
refusal events are checked on real training runs in test_prefect_flow_e2e.py."""
import time

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One ephemeral Prefect API for the module's runs."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
        with prefect_test_harness(server_startup_timeout=90):
            yield


def _params_file(tmp_path, params, block, **sections):
    raw = params.model_dump(mode="json") | {"notify": {"block": block}}
    for section, values in sections.items():
        raw[section] = raw[section] | values
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _bad_landing(tmp_path):
    """A landing folder whose one day lacks the label columns: ingest quarantines it and the run fails."""
    day = tmp_path / "landing" / "dt=2026-09-01"
    day.mkdir(parents=True)
    pd.DataFrame({"impression_id": [1, 2], "user_id": [1, 2], "item_id": [1, 2],
                  "event_timestamp": pd.to_datetime(["2026-09-01 10:00", "2026-09-01 11:00"], utc=True)}
                 ).to_parquet(day / "impressions.parquet")
    return tmp_path / "landing"


def test_a_run_failing_on_a_bad_partition_posts_its_cause(prefect_api, tmp_path, params, webhook,
                                                          save_webhook_block):
    from features.contract import PartitionsQuarantined
    from flows.pipeline import retrain

    url, received = webhook
    path = _params_file(tmp_path, params, save_webhook_block(url))
    with pytest.raises(PartitionsQuarantined):
        retrain(params_path=str(path), data_dir=str(tmp_path / "data"), source=str(_bad_landing(tmp_path)))
    assert len(received) == 1, received
    subject, body = received[0]["subject"], received[0]["body"]
    assert subject.startswith("funnelflow: retrain failed (")
    first = body.splitlines()[0]
    assert first.startswith("funnelflow-retrain run '") and "ended Failed: day 2026-09-01 quarantined in " in first
    assert str(tmp_path / "data" / "quarantine" / "dt=2026-09-01") in first
    assert "/runs/flow-run/" in body.splitlines()[-1]  # the run's page
    assert "gate record" not in body  # the gate never ran


def test_a_bad_override_fails_the_run_and_a_broken_params_file_still_notifies(prefect_api, tmp_path, params,
                                                                              webhook, save_webhook_block):
    from flows.overrides import Overrides, TrainOverrides
    from flows.params import ParamsError
    from flows.pipeline import retrain

    url, received = webhook
    block = save_webhook_block(url)
    good = _params_file(tmp_path, params, block)
    with pytest.raises(ParamsError, match=r"^overrides: train\.epochs: Input should be greater than or equal to 1$"):
        retrain(params_path=str(good), data_dir=str(tmp_path / "data"),
                overrides=Overrides(train=TrainOverrides(epochs=0)))
    # params.yaml itself broken: its notify section is still read, and the cause is the file's error line.
    broken = _params_file(tmp_path, params, block, split={"bogus": 1})
    with pytest.raises(ParamsError, match=r"split\.bogus"):
        retrain(params_path=str(broken), data_dir=str(tmp_path / "data"))
    assert [m["body"].splitlines()[0].split(": ", 1)[1] for m in received] == [
        "overrides: train.epochs: Input should be greater than or equal to 1",
        f"{broken}: split.bogus: Extra inputs are not permitted"]


@pytest.mark.parametrize("block", ["nothing-listens", "never-saved"])
def test_a_notification_that_cannot_be_sent_leaves_the_runs_own_failure(prefect_api, tmp_path, params, webhook,
                                                                         save_webhook_block, block):
    from prefect.client.orchestration import get_client

    from features.contract import PartitionsQuarantined
    from flows.pipeline import retrain
    from infra.local_prefect import free_port

    _, received = webhook
    if block == "nothing-listens":
        save_webhook_block(f"http://127.0.0.1:{free_port()}/hook", block)
    path = _params_file(tmp_path, params, f"custom-webhook/{block}")
    with pytest.raises(PartitionsQuarantined):
        retrain(params_path=str(path), data_dir=str(tmp_path / "data"), source=str(_bad_landing(tmp_path)))
    assert received == []
    expected = f"failure notification to custom-webhook/{block} not sent: "
    deadline, warnings = time.time() + 20, []  # run logs reach the API in batches
    with get_client(sync_client=True) as client:
        while not warnings and time.time() < deadline:
            time.sleep(0.5)
            warnings = [log.message for log in client.read_logs() if log.message.startswith(expected)]
    assert warnings, f"no {expected!r} warning in the run's logs"
