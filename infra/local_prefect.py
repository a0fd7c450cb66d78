"""Start a local Prefect server and process worker, deploy infra/prefect.yaml, trigger, stop.

    python -m infra.local_prefect start [--port 4200]   # server + work pool + worker
    python -m infra.local_prefect deploy                 # the deployments of infra/prefect.yaml
    python -m infra.local_prefect trigger [--param k=v]  # run daily-retrain now and wait for its end
                                                         # (v: JSON, e.g. overrides={"train": {"epochs": 1}},
                                                         # else a string)
    python -m infra.local_prefect stop                   # stop only what `start` started

The server (``prefect server start``, waited for with ``prefect server status --wait``) and the worker
each run in a process group of their own, their output in ``server.log`` and ``worker.log``, and are
stopped by their PIDs. Not ``prefect server start --background``: it leaves the server writing into
pipes that nobody reads once the command returns, and a day run of the daily loop saw that server
answer 500 and die ("Connection refused"), its output lost. State (PREFECT_HOME, the port and PIDs,
the logs) lives in infra/.run/ unless FUNNELFLOW_PREFECT_RUN_DIR is set.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
POOL = "funnelflow-process"
DEPLOYMENT = "funnelflow-retrain/daily-retrain"


def run_dir() -> Path:
    """Where the local server's and worker's state lives."""
    d = Path(os.environ.get("FUNNELFLOW_PREFECT_RUN_DIR", REPO / "infra" / ".run"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state() -> dict:
    f = run_dir() / "state.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _save(state: dict) -> None:
    (run_dir() / "state.json").write_text(json.dumps(state))


def env(port: int | None = None) -> dict[str, str]:
    """The environment of every Prefect command against the local server (default: the started one's port)."""
    port = port or _state()["port"]
    e = dict(os.environ)
    e.update({
        "PREFECT_HOME": str(run_dir() / "prefect_home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "FUNNELFLOW_REPO": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
    })
    return e


def _prefect(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env(), cwd=REPO, text=True,
                          capture_output=True, check=check, timeout=timeout)


def start(port: int | None = None, timeout: int = 120) -> dict:
    """Start Prefect's background server, create the process work pool, start a worker on it."""
    if _state():
        raise RuntimeError(f"already started ({run_dir() / 'state.json'}); run stop first")
    state: dict = {"port": port or free_port()}
    _save(state)
    state["server_pid"] = _spawn("server.log", "server", "start", "--host", "127.0.0.1", "--port", str(state["port"]))
    _save(state)
    _prefect("server", "status", "--wait", "--timeout", str(timeout), timeout=timeout + 30)
    if POOL not in _prefect("work-pool", "ls", check=False).stdout:
        _prefect("work-pool", "create", POOL, "--type", "process")
    state["worker_pid"] = _spawn("worker.log", "worker", "start", "--pool", POOL)
    _save(state)
    return state


def _spawn(log_name: str, *args: str) -> int:
    """``prefect ARGS`` in a process group of its own, its output into ``log_name`` in the run dir; its PID."""
    with open(run_dir() / log_name, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env(), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True).pid


def deploy() -> str:
    """Register the deployments of infra/prefect.yaml on the local server."""
    return _prefect("--no-prompt", "deploy", "--prefect-file", str(REPO / "infra" / "prefect.yaml"), "--all").stdout


def pause_schedules() -> None:
    """Pause the cron schedules of the local server's deployments (runs are then only those triggered)."""
    _prefect("--no-prompt", "deployment", "schedule", "pause", "--all")


def trigger(parameters: dict | None = None, timeout: float = 900, poll_interval: float = 5) -> dict:
    """Run the deployment now (what the cron schedule does daily) and wait for a final state."""
    os.environ.update({k: v for k, v in env().items() if k.startswith("PREFECT_")})
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = cast(FlowRun, run_deployment(DEPLOYMENT, parameters=parameters or {}, timeout=timeout,
                                        poll_interval=poll_interval))  # sync here
    return {"id": str(run.id), "state": run.state.type.value if run.state else None,
            "message": run.state.message if run.state else None}


def _alive(pid: int) -> bool:
    try:  # reap it if it is this process's child (a zombie still answers kill 0)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, grace: float) -> bool:
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    return not _alive(pid)


def _stop_group(pid: int, sig: signal.Signals, grace: float) -> None:
    """``sig`` to the process group ``pid`` leads, SIGKILL after ``grace`` seconds."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, grace):
        os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


def stop(grace: float = 30) -> dict:
    """Stop the worker and the server by their PIDs, and wait until both are gone."""
    state = _state()
    if state.get("worker_pid"):
        _stop_group(state["worker_pid"], signal.SIGINT, 10)  # a worker ignores SIGTERM
    if state.get("server_pid"):
        _stop_group(state["server_pid"], signal.SIGTERM, grace)
    (run_dir() / "state.json").unlink(missing_ok=True)
    return state


def parameter(arg: str) -> tuple[str, object]:
    """``k=v`` of ``trigger --param``: ``v`` as JSON when it is JSON (objects, numbers, null), else a string."""
    key, _, value = arg.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    """The command line: start, deploy, trigger or stop."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "deploy", "trigger", "stop"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--param", action="append", default=[],
                    help="flow parameter k=v for trigger (v: JSON, else a string)")
    a = ap.parse_args()
    if a.command == "start":
        print(json.dumps(start(a.port)))
    elif a.command == "deploy":
        print(deploy())
    elif a.command == "trigger":
        res = trigger(dict(parameter(p) for p in a.param))
        print(json.dumps(res))
        sys.exit(0 if res["state"] == "COMPLETED" else 1)
    else:
        print(json.dumps(stop()))


if __name__ == "__main__":
    main()
