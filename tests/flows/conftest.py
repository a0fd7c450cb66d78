import shutil

import pytest

from flows import steps
from flows.params import Paths


@pytest.fixture()
def fresh_data(pipeline_data, tmp_path, params):
    """A private copy of the pipeline's data dir (through the training set), with Feast re-applied so
    its registry points at this copy's feature tables."""
    paths = Paths(tmp_path / "data")
    shutil.copytree(pipeline_data.root, paths.root)
    for p in ("registry", "gate", "bundle", "evaluation", "model", "validation"):
        shutil.rmtree(paths.root / p, ignore_errors=True)
    (paths.root / "feast" / "registry.db").unlink()
    steps.features_apply(params, paths)
    return paths


@pytest.fixture()
def fast_params(params):
    """Small, quick training for end-to-end tests."""
    return params.model_copy(update={
        "train": params.train.model_copy(update={"epochs": 3, "batch_size": 256, "lr": 0.002}),
        "model": params.model.model_copy(update={"hidden": [64, 32], "tower": [32]}),
    })


@pytest.fixture()
def webhook():
    """A local webhook receiver (a real HTTP server on a free loopback port): its URL and the JSON bodies
    POSTed to it."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


@pytest.fixture()
def save_webhook_block():
    """Saves, on the current Prefect API, a custom-webhook notification block that POSTs subject and body
    as JSON to a URL; returns its params.yaml ``notify.block`` reference."""

    def save(url: str, name: str = "funnelflow-test") -> str:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        CustomWebhookNotificationBlock(name=name, url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"},
                                       timeout=5).save(name, overwrite=True)
        return f"custom-webhook/{name}"

    return save


@pytest.fixture(scope="session")
def ci_blessed(tmp_path_factory, params):
    """The state CI leaves after its first retraining: a scratch repo (tiny data, a gate that blesses)
    whose infra/ci_retrain.sh run blessed, pushed to a local DVC remote and committed and pushed to a
    bare git ``origin``. The DVC tests read it or clone it: one full ``dvc repro`` for all of them."""
    from tests.flows.dvc_scratch import first_ci_run

    return first_ci_run(tmp_path_factory.mktemp("ci"), params)
