"""What the retrain flow tells the outside: a notification when a run fails or the gate refuses its
candidate, and Prefect events when a candidate is promoted or refused.

- ``notify_failure`` is the flow's failure (and crash) hook. It sends the run's name, the one-line cause,
  the gate record when the gate refused, and the run's page, to the Prefect notification block that
  params.yaml ``notify.block`` names (``<block-type-slug>/<block-name>``, e.g.
  ``custom-webhook/funnelflow-alerts``). A notification that cannot be sent is a warning in the run's
  logs: the run's own failure stays what the run reports.
- ``emit_promoted`` and ``emit_refused`` emit ``funnelflow.model.promoted`` (resource
  ``funnelflow.model.<version>``) and ``funnelflow.model.refused`` (resource
  ``funnelflow.candidate.<model sha256, 12 hex>``); Prefect relates them to the flow run that emitted
  them. Automations can trigger on them; the UI's event feed lists them.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flows.console import EXPECTED, one_line
from flows.gate import GateFailed
from flows.params import NotifyConfig, ParamsError, Paths, load_params, params_file

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.blocks.abstract import NotificationBlock
    from prefect.client.schemas.objects import FlowRun, State

PROMOTED, REFUSED = "funnelflow.model.promoted", "funnelflow.model.refused"


def notify_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """Send the failed run's cause to the configured notification block (a hook: never raises)."""
    from prefect.logging.loggers import flow_run_logger

    logger, block = flow_run_logger(flow_run, flow), None
    try:
        block = notify_config(flow_run.parameters.get("params_path")).block
        if block is None:
            return
        subject, body = failure_message(flow_run, state)
        send(notifier(block), subject, body)
        logger.info("failure notification sent to %s", block)
    except Exception as exc:  # a notification problem must not replace the run's own failure
        logger.warning("failure notification to %s not sent: %s: %s", block, type(exc).__name__, exc)


def notify_config(params_path: str | None) -> NotifyConfig:
    """The run's ``notify`` section. A params.yaml that fails to load is itself a failure to report,
    so then its ``notify`` section is read alone."""
    try:
        return load_params(params_path).notify
    except ParamsError:
        raw = yaml.safe_load(params_file(params_path).read_text()) or {}
        return NotifyConfig.model_validate(raw.get("notify") or {})


def notifier(ref: str) -> NotificationBlock:
    """The saved notification block ``<block-type-slug>/<block-name>``."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block

    block = Block.load(ref)
    if not isinstance(block, NotificationBlock):
        raise TypeError(f"params.yaml notify.block: {ref!r} is a {type(block).__name__}, not a notification "
                        "block; name one such as custom-webhook/<name> or slack-webhook/<name>")
    return block


def send(block: NotificationBlock, subject: str, body: str) -> None:
    """Notify through ``block``: Prefect's own blocks send synchronously when called from sync code; a
    block whose ``notify`` is only async is run to completion here."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    sent: Any = block.notify(body=body, subject=subject)
    if inspect.iscoroutine(sent):
        run_coro_as_sync(sent)


def failure_message(flow_run: FlowRun, state: State) -> tuple[str, str]:
    """The notification's subject and body: the run, the one-line cause, the gate record, the run's page."""
    from prefect.utilities.urls import url_for

    exc = _exception(state)
    refused = isinstance(exc, GateFailed)
    if exc is None:
        cause = state.message or state.name
    elif isinstance(exc, EXPECTED):
        cause = one_line(exc)
    else:
        cause = f"{type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}"
    what = "refused its candidate" if refused else f"ended {state.name}"
    lines = [f"funnelflow-retrain run {flow_run.name!r} {what}: {cause}"]
    if refused:
        gate = _paths(flow_run).gate
        lines.append(f"gate record: {gate / 'blessing.md'} (checks: {gate / 'blessing.json'})")
    if url := url_for(flow_run):
        lines.append(f"run: {url}")
    subject = "funnelflow: candidate refused" if refused else "funnelflow: retrain failed"
    return f"{subject} ({flow_run.name})", "\n".join(lines)


def _exception(state: State) -> BaseException | None:
    """The exception the run failed with, if Prefect still holds it."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read back: the state's message says what happened
        return None
    return result if isinstance(result, BaseException) else None


def _paths(flow_run: FlowRun) -> Paths:
    data_dir = flow_run.parameters.get("data_dir")
    return Paths(Path(data_dir).resolve()) if data_dir else Paths.default()


def emit_promoted(promoted: dict, metrics: dict[str, float], model_sha256: str | None) -> None:
    """``funnelflow.model.promoted``: the new champion's version and path, its test metrics, the one before."""
    from prefect.events import emit_event

    version, previous = promoted["champion"], promoted.get("previous")
    emit_event(PROMOTED, resource=_model(version, model_sha256),
               related=[_role(f"funnelflow.model.{previous}", "previous-champion")] if previous else [],
               payload={"version": version, "previous": previous, "path": str(promoted["path"]), "metrics": metrics})


def emit_refused(blessing: dict, record: Path) -> None:
    """``funnelflow.model.refused``: the failed checks, every check, the champion it was judged against."""
    from prefect.events import emit_event

    sha = (blessing.get("candidate") or {}).get("model_sha256") or "unknown"
    champion = blessing.get("champion_version")
    emit_event(REFUSED, resource={"prefect.resource.id": f"funnelflow.candidate.{sha[:12]}",
                                  "prefect.resource.name": "candidate", "funnelflow.model_sha256": sha},
               related=[_role(f"funnelflow.model.{champion}", "champion")] if champion else [],
               payload={"champion": champion, "record": str(record), "checks": blessing["checks"],
                        "failed": [c["metric"] for c in blessing["checks"] if not c["passed"]]})


def _model(version: str, model_sha256: str | None) -> dict[str, str]:
    labels = {"prefect.resource.id": f"funnelflow.model.{version}", "prefect.resource.name": version}
    return labels | ({"funnelflow.model_sha256": model_sha256} if model_sha256 else {})


def _role(resource_id: str, role: str) -> dict[str, Any]:
    return {"prefect.resource.id": resource_id, "prefect.resource.role": role}

