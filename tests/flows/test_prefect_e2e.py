"""Everything on a real Prefect API, in one file so that no two Prefect servers run at once under
`pytest -n 2 --dist loadfile` (a local server died when two ran concurrently).

The flow end to end on small generated data, on an ephemeral API: artifacts, caching, the promotion and
refusal events, and a refusal's notification to a local webhook receiver. A failed run notifies through a
Prefect notification block. Days of operation through the scheduled deployment (benchmarks/daily_loop.py,
short): a real local Prefect server and process worker, the deployment of infra/prefect.yaml, data landing
day by day and each day's run triggered on the landing folder; a day delivered with flipped labels is
refused and the champion stays; its re-delivery the next day replaces that day only; an empty day is
quarantined and the champion stays; a rollback moves the pointer back; the server and worker are stopped
by PID, nothing left running."""
import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from features.contract import read_raw
from flows.params import REPO_ROOT

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


# --- days of operation through the deployment (before the notification tests' module-wide API starts)

def test_days_of_operation(tmp_path):
    from flows.registry import Registry

    # Its own process: the simulation points its process's Prefect settings at the server it starts.
    res = subprocess.run([sys.executable, "-m", "benchmarks.daily_loop", "--days", "6", "--history-days", "3",
                          "--drift-from-day", "0", "--frozen-day", "3", "--bad-day", "4", "--empty-day", "5",
                          "--rows-per-day", "2500", "--window-days", "6", "--epochs", "1", "--min-click-auc", "0.0",
                          "--no-change-bounds", "--work-dir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    days = {d["day"]: SimpleNamespace(**d) for d in json.loads((tmp_path / "days.json").read_text())}
    data = tmp_path / "data"

    assert days[3].state == "COMPLETED" and days[3].champion == "v0001"
    assert days[3].auc_champion == days[3].auc_frozen  # the frozen model is day 3's champion
    # Flipped labels: refused (validation or gate), the champion stays.
    assert days[4].state != "COMPLETED" and days[4].champion == "v0001"
    # Re-delivered the next day: that day, and only it, replaced with the good data.
    bad_date = days[4].date
    stored = read_raw(data / "raw", "impressions", days=[bad_date]).sort_values("impression_id")
    good = pd.read_parquet(tmp_path / "future" / f"dt={bad_date}" / "impressions.parquet").sort_values("impression_id")
    assert stored["click"].tolist() == good["click"].tolist()
    raw = json.loads((data / "raw" / "partitions.json").read_text())
    # The empty day: quarantined with its reason, the run refused, the champion kept.
    assert days[5].state != "COMPLETED" and days[5].champion == days[4].champion
    assert "no impressions" in (data / "quarantine" / f"dt={days[5].date}" / "reason.txt").read_text()
    assert days[5].date not in raw["partitions"]
    # The next good day is trained on and promoted; its champion and the frozen model score it.
    assert days[6].state == "COMPLETED" and days[6].champion not in (None, "v0001")
    assert days[6].auc_champion is not None and days[6].auc_frozen is not None
    # The deployment of infra/prefect.yaml ran it; what was started is stopped.
    deployed = (tmp_path / "deployed.txt").read_text()
    assert "daily-retrain" in deployed
    stopped = json.loads((tmp_path / "stopped.json").read_text())
    for pid in (stopped["server_pid"], stopped["worker_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(stopped["server_pid"], 0)  # nothing of the server's process group is left
    # The operator's rollback at the end.
    registry = Registry(data / "registry")
    assert registry.history()[-1]["event"] == "rollback"
    assert registry.champion()["version"] < days[6].champion


# --- notifications of failed runs

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


# --- tuning

def test_the_tune_flow_runs_each_trial_as_a_task(prefect_api, tmp_path, pipeline_data, params):
    """`funnelflow-tune` on a real API: the flow asks Optuna, a tune_trial task per trial trains and scores
    on train/validation (the test split is absent), the flow tells; tuned.yaml is written beside params.yaml."""
    import shutil

    import anyio
    from prefect.client.orchestration import get_client

    from flows.pipeline import tune_search

    data = tmp_path / "data"
    shutil.copytree(pipeline_data.training_set, data / "training_set")
    (data / "training_set" / "test.parquet").unlink()
    raw = params.model_dump(mode="json")
    raw["train"].update(epochs=1)
    raw["model"].update(hidden=[32], tower=[16])
    raw["tune"].update(trials=2, timeout_minutes=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tune_search(params_path=str(tmp_path / "params.yaml"), data_dir=str(data))

    async def task_runs():
        async with get_client() as client:
            return await client.read_task_runs()

    runs = anyio.run(task_runs)
    assert out["trials"] == 2 and (tmp_path / "tuned.yaml").exists()
    assert sorted(r.state_name for r in runs if r.name.startswith("tune_trial")) == ["Completed", "Completed"]


# --- off one host: the Kubernetes work pool

def test_the_kubernetes_deployment_deploys_and_renders_a_job_on_the_data_volume(prefect_api, tmp_path):
    """infra/prefect-k8s.yaml deployed with `prefect deploy` onto a Kubernetes work pool made from
    infra/k8s/base-job-template.json (no cluster here: the Job is rendered, not run). The deployment pulls
    nothing from a checkout, and the rendered Job runs the given image on the data volume."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads((REPO_ROOT / "infra" / "k8s" / "base-job-template.json").read_text())
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "FUNNELFLOW_IMAGE": "registry.example.com/funnelflow:cuda"}

    def prefect(*args):
        res = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    prefect("work-pool", "create", "funnelflow-kubernetes", "--type", "kubernetes",
            "--base-job-template", str(REPO_ROOT / "infra" / "k8s" / "base-job-template.json"))
    prefect("--no-prompt", "deploy", "--prefect-file", "infra/prefect-k8s.yaml", "--all")

    async def deployment():
        async with get_client() as client:
            return await client.read_deployment_by_name("funnelflow-retrain/daily-retrain-k8s")

    dep = anyio.run(deployment)
    assert dep.work_pool_name == "funnelflow-kubernetes" and dep.entrypoint == "flows/pipeline.py:retrain"
    assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/funnelflow"}}]
    assert dep.parameters["data_dir"] == "/data" and dep.job_variables["image"] == env["FUNNELFLOW_IMAGE"]

    class KubernetesJob(BaseJobConfiguration):  # the manifest field of prefect-kubernetes' configuration
        job_manifest: dict

    async def render():
        return await KubernetesJob.from_template_and_values(template, {**dep.job_variables, "gpu_count": 1})

    job = anyio.run(render).model_dump()
    pod = job["job_manifest"]["spec"]["template"]["spec"]  # what the kubernetes worker submits
    container = pod["containers"][0]
    assert container["image"] == env["FUNNELFLOW_IMAGE"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "funnelflow-data"


def test_the_image_copies_only_files_the_repo_has():
    """No Docker engine runs here, so the image is not built in the tests: what can be checked is that every
    file infra/Dockerfile copies by name exists and that .dockerignore keeps it in the build context."""
    lines = (REPO_ROOT / "infra" / "Dockerfile").read_text().splitlines()
    copied = [p for line in lines if line.startswith("COPY ") for p in line.split()[1:-1] if p != "."]
    ignored = {p.strip() for p in (REPO_ROOT / ".dockerignore").read_text().splitlines() if p and p[0] != "#"}
    assert copied and all((REPO_ROOT / p).is_file() for p in copied), copied
    assert not ignored & set(copied)
    assert {"data", ".venv", ".git"} <= ignored  # data is a volume; the image installs its own environment
