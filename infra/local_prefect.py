"""Start a local Prefect server and process worker, deploy infra/prefect.yaml, trigger, stop by PID.

    python -m infra.local_prefect start [--port 4200]   # server + work pool + worker, PIDs in infra/.run/
    python -m infra.local_prefect deploy                 # the deployments of infra/prefect.yaml
    python -m infra.local_prefect trigger [--param k=v]  # run daily-retrain now and wait for its end
    python -m infra.local_prefect stop                   # stop only what `start` started

State (PREFECT_HOME, PID files, logs) lives in infra/.run/ unless FUNNELFLOW_PREFECT_RUN_DIR is set.
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
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = "funnelflow-process"
DEPLOYMENT = "funnelflow-retrain/daily-retrain"


def run_dir() -> Path:
    d = Path(os.environ.get("FUNNELFLOW_PREFECT_RUN_DIR", REPO / "infra" / ".run"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state() -> dict:
    f = run_dir() / "state.json"
    return json.loads(f.read_text()) if f.exists() else {}


def env(port: int | None = None) -> dict[str, str]:
    port = port or _state()["port"]
    e = dict(os.environ)
    e.update({
        "PREFECT_HOME": str(run_dir() / "prefect_home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "FUNNELFLOW_REPO": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}",
    })
    return e


def _prefect(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env(), cwd=REPO, text=True,
                          capture_output=True, check=check, timeout=timeout)


def _spawn(name: str, args: list[str], e: dict) -> int:
    log = open(run_dir() / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", *args], env=e, cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _wait_healthy(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Prefect server on port {port} not healthy after {timeout}s; see {run_dir() / 'server.log'}")


def start(port: int | None = None, timeout: float = 120) -> dict:
    if _state().get("server_pid"):
        raise RuntimeError(f"already started ({run_dir() / 'state.json'}); run stop first")
    port = port or free_port()
    e = env(port)
    state = {"port": port, "server_pid": _spawn("server", ["server", "start", "--host", "127.0.0.1",
                                                            "--port", str(port)], e)}
    (run_dir() / "state.json").write_text(json.dumps(state))
    _wait_healthy(port, timeout)
    pools = _prefect("work-pool", "ls", check=False).stdout
    if POOL not in pools:
        _prefect("work-pool", "create", POOL, "--type", "process")
    state["worker_pid"] = _spawn("worker", ["worker", "start", "--pool", POOL], e)
    (run_dir() / "state.json").write_text(json.dumps(state))
    return state


def deploy() -> str:
    return _prefect("--no-prompt", "deploy", "--prefect-file", str(REPO / "infra" / "prefect.yaml"), "--all").stdout


def trigger(parameters: dict | None = None, timeout: float = 900) -> dict:
    """Run the deployment now (what the cron schedule does daily) and wait for a final state."""
    os.environ.update({k: v for k, v in env().items() if k.startswith("PREFECT_")})
    from prefect.deployments import run_deployment

    run = run_deployment(DEPLOYMENT, parameters=parameters or {}, timeout=timeout)
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


def _stop_pid(pid: int, first: signal.Signals, grace: float) -> None:
    """Signal the process group we started (start_new_session), then SIGKILL after ``grace``."""
    try:
        os.killpg(pid, first)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def stop() -> dict:
    state = _state()
    # A worker ignores SIGTERM: SIGINT, then SIGKILL. The server stops on SIGTERM.
    if state.get("worker_pid"):
        _stop_pid(state["worker_pid"], signal.SIGINT, 10)
    if state.get("server_pid"):
        _stop_pid(state["server_pid"], signal.SIGTERM, 15)
    (run_dir() / "state.json").unlink(missing_ok=True)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["start", "deploy", "trigger", "stop"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--param", action="append", default=[], help="flow parameter k=v for trigger")
    a = ap.parse_args()
    if a.command == "start":
        print(json.dumps(start(a.port)))
    elif a.command == "deploy":
        print(deploy())
    elif a.command == "trigger":
        res = trigger(dict(p.split("=", 1) for p in a.param))
        print(json.dumps(res))
        sys.exit(0 if res["state"] == "COMPLETED" else 1)
    else:
        print(json.dumps(stop()))


if __name__ == "__main__":
    main()
