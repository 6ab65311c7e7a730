"""Create the work pools and deployments, start workers, and bring the local stack up or down.

    python deployments/stack.py deploy              # idempotent: pools `cpu` and `gpu`, every deployment
    python deployments/stack.py worker --pool cpu   # a process worker in the foreground
    python deployments/stack.py up                  # server + deployments + a background `cpu` worker
    python deployments/stack.py down                # stop the background workers and the server
    python deployments/stack.py status
    python deployments/stack.py run on-demand --config '{"training": {"epochs": 50}}' [--wait]

A GPU host runs `python deployments/stack.py worker --pool gpu`; without a GPU the `gpu` pool simply
has no worker and its runs wait. Workers and the server use the same PREFECT_API_URL (see README).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.definitions import CPU_POOL, DEPLOYMENTS, GPU_POOL, DeploymentSpec
from flows.processes import is_process, read_pid, terminate
from flows.server import REPO_ROOT, ensure_server, is_healthy, resolve_home, server_status, stop_server, user_api_url
from flows.zombies import AUTOMATION_NAME as ZOMBIE_AUTOMATION, ensure_zombie_detection

POOLS = (CPU_POOL, GPU_POOL)


def ensure_work_pools(names: tuple[str, ...] | list[str] = POOLS) -> None:
    """Create the process work pools that do not exist yet."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass


def deploy(spec: DeploymentSpec, *, source: Path = REPO_ROOT) -> str:
    """Create or update one deployment from the project's source folder; returns its id."""
    from prefect import flow

    runnable = flow.from_source(source=str(source), entrypoint=spec.entrypoint)
    return str(runnable.deploy(
        name=spec.name, work_pool_name=spec.pool, cron=spec.cron, parameters=spec.parameters,
        description=spec.description, tags=list(spec.tags), build=False, push=False, print_next_steps=False,
        ignore_warnings=True,  # Prefect's ".serve" advice for process pools, once per deployment otherwise
    ))


def deploy_all(specs: tuple[DeploymentSpec, ...] = DEPLOYMENTS) -> dict[str, str]:
    """Pools and every deployment; running it again updates them in place."""
    ensure_work_pools(sorted({spec.pool for spec in specs} | set(POOLS)))
    return {spec.name: deploy(spec) for spec in specs}


def worker_command(pool: str, *, run_once: bool = False, name: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if name:
        command += ["--name", name]
    return command + (["--run-once"] if run_once else [])


def _pid_file(pool: str) -> Path:
    return resolve_home() / f"worker-{pool}.pid"


def running_worker(pool: str) -> int | None:
    """The pid of this project's background worker for ``pool``, if one is really running."""
    pid = read_pid(_pid_file(pool))
    command = f"prefect\0worker\0start\0--pool\0{pool}\0".encode()  # as worker_command(pool) spells it
    return pid if pid is not None and is_process(pid, command) else None


def start_background_worker(pool: str) -> int:
    """Start a worker for ``pool`` that outlives this process; it logs to ``<PREFECT_HOME>/worker-<pool>.log``."""
    log = (resolve_home() / f"worker-{pool}.log").open("ab")
    process = subprocess.Popen(worker_command(pool, name=f"{pool}-worker"), stdout=log, stderr=log,
                               start_new_session=True, cwd=REPO_ROOT)
    _pid_file(pool).write_text(str(process.pid))
    return process.pid


def stop_background_worker(pool: str) -> bool:
    """Stop the background worker for ``pool``; False when none was running (a stale pid file is removed)."""
    pid = running_worker(pool)
    _pid_file(pool).unlink(missing_ok=True)
    if pid is None:
        return False
    terminate(pid, timeout=5.0)
    return True


def deployment_name(name: str) -> str:
    """``on-demand`` -> ``nodecore-train/on-demand``; a full ``flow/deployment`` name must be one of ours.

    Raises:
        ValueError: naming the unknown deployment and the valid names.
    """
    valid = [spec.full_name for spec in DEPLOYMENTS]
    full = name if "/" in name else f"nodecore-train/{name}"
    if full not in valid:
        raise ValueError(f"unknown deployment {name!r}; valid: {', '.join(valid)} (the nodecore-train ones also "
                         "by their short name)")
    return full


def run_deployment_command(name: str, config: str | None, *, wait: bool, ui_url: str) -> int:
    """Start a run of deployment ``name`` with the JSON ``config`` changes; print its UI address.

    Raises:
        ValueError: the deployment is unknown, or the config is not JSON or not a valid PipelineConfig change.
    """
    import json

    from prefect.deployments import run_deployment
    from pydantic import ValidationError

    from tasks.config import PipelineConfig

    full = deployment_name(name)
    parameters = {}
    if config:
        try:
            changes = json.loads(config)
            PipelineConfig.model_validate(changes)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config is not JSON ({err.msg} at character {err.pos}): {config!r}") from None
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"--config: {problems}") from None
        parameters = {"config": changes}
    flow_run = run_deployment(full, parameters=parameters, timeout=None if wait else 0)
    print(f"flow run {flow_run.name} ({flow_run.id}) of {full}: {ui_url}/runs/flow-run/{flow_run.id}")
    if not wait:
        print("a worker on its pool runs it (`make up` starts a cpu worker; --wait waits for the result)")
        return 0
    state = flow_run.state
    print(f"it ended {state.name if state else 'UNKNOWN'}" + (f": {state.message}" if state and state.message else ""))
    return 0 if state is not None and state.is_completed() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="create or update the work pools and deployments (idempotent)")
    worker = commands.add_parser("worker", help="run a process worker in the foreground")
    worker.add_argument("--pool", default=CPU_POOL, help="work pool to poll (default: cpu)")
    worker.add_argument("--run-once", action="store_true", help="exit after one scheduled run")
    commands.add_parser("up", help="start the local server, deploy, and start a background cpu worker")
    commands.add_parser("down", help="stop the background workers and the local server")
    commands.add_parser("status", help="say what is running")
    run = commands.add_parser("run", help="start a run of a deployment and print its address in the UI")
    run.add_argument("deployment", help="on-demand, nightly-grid, gpu-grid, or a full flow/deployment name")
    run.add_argument("--config", help='config changes as JSON, e.g. \'{"training": {"epochs": 50}}\'')
    run.add_argument("--wait", action="store_true", help="wait for the run; exit 0 only if it completed")
    args = parser.parse_args(argv)

    if args.command == "down":
        stopped = [pool for pool in POOLS if stop_background_worker(pool)]
        print(f"stopped workers: {', '.join(stopped) or 'none'}")
        print("stopped the local Prefect server" if stop_server() else "no local Prefect server was running")
        return 0
    if args.command == "status":
        if (api_url := user_api_url()) is not None:
            print(f"server {api_url} (configured by the user): {'up' if is_healthy(api_url) else 'down'}")
        else:
            print(f"server {server_status()[1]}")
        for pool in POOLS:
            print(f"background {pool} worker: {running_worker(pool) or 'none'}")
        return 0
    if args.command == "run":
        try:
            deployment_name(args.deployment)
        except ValueError as err:
            parser.error(str(err))
    info = ensure_server()
    if args.command == "run":
        from flows.server import prefect_settings_context

        with prefect_settings_context(info):
            try:
                return run_deployment_command(args.deployment, args.config, wait=args.wait, ui_url=info.ui_url)
            except ValueError as err:
                parser.error(str(err))
    if args.command == "worker":
        return subprocess.call(worker_command(args.pool, run_once=args.run_once), cwd=REPO_ROOT)
    if args.command in ("deploy", "up"):
        for name, deployment_id in deploy_all().items():
            print(f"deployment {name}: {deployment_id}")
        if (within := ensure_zombie_detection()) is not None:
            print(f"a cell run without a heartbeat for {within.total_seconds():.0f} s is marked Crashed "
                  f"(automation {ZOMBIE_AUTOMATION!r})")
    if args.command == "up":
        if (pid := running_worker(CPU_POOL)) is not None:
            print(f"a {CPU_POOL} worker is already running (pid {pid})")
        else:
            print(f"started a {CPU_POOL} worker (pid {start_background_worker(CPU_POOL)})")
        python = os.path.relpath(sys.executable, Path.cwd())
        print(f"UI: {info.ui_url}; start a run: {python} deployments/stack.py run on-demand")
    return 0


if __name__ == "__main__":
    sys.exit(main())
