"""Several hosts for real, on one machine: network namespaces joined by veth pairs, sharing only two addresses.

The hub namespace runs the Prefect server and the S3 server (moto). Each other namespace is a host with one
veth link to the hub and nothing else (the hub does not forward), so it reaches the hub's address on that
link and no other host:

    w1 (10.231.1.2) --- 10.231.1.1 \\
    w2 (10.231.2.2) --- 10.231.2.1  hub: prefect server :4200, S3 :5000
    w3 (10.231.3.2) --- 10.231.3.1 /
    this process (10.231.9.2) --- 10.231.9.1

w1 and w2 run a process worker each on one work pool; the grid's two cells are dispatched there, their
artifacts land in the bucket, and a rerun from w3, which has nothing local, takes every cell from it. Then a host dies
mid-training (every process in w1 killed at once, right after its first checkpoint reached the bucket): the
dispatch times out, and the retried cell runs on w2, resuming from w1's checkpoint in the bucket. Hosts share one
file system here, so each gets its own working copy, device-slot folder and Prefect home; they share the
manifest signing key through the environment, as the README asks of real hosts.

The same grid also runs through ``--run.executor dask`` on a real Dask cluster in those namespaces: ``dask
scheduler`` on the hub, one ``dask worker`` on each of w1 and w2, the flow connecting from this process; its
artifacts land in the bucket and a rerun takes every cell from it. For that test only, w1 and w2 also reach each other
(the hub forwards between them) and this process's address of the hub, as a Dask cluster needs (see
``_dask_network``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployments.definitions import cell_deployment
from deployments.stack import deploy, ensure_work_pools
from flows.server import REPO_ROOT
from tasks.config import PipelineConfig
from tasks.store import CACHE_ENV, ArtifactStore

POOL = "net"
HOSTS = {"w1": 1, "w2": 2, "w3": 3}
CLIENT_NET = 9
SIGNING_KEY = "multihost-test-signing-key-0123456789"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _why_no_netns() -> str | None:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (`ip netns`)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (.ci/run runs as root)"
    probe = f"nc-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_NO_NETNS = _why_no_netns()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_NO_NETNS is not None, reason=_NO_NETNS or "")]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Network:
    """The namespaces' names, the hub's address as each host sees it, and the processes started in them."""

    hub: str
    hosts: dict[str, str]  # host label -> namespace
    tmp: Path
    processes: list[subprocess.Popen]

    def hub_address(self, host: str | None) -> str:
        return f"10.231.{HOSTS[host] if host else CLIENT_NET}.1"

    def host_env(self, host: str) -> dict[str, str]:
        """What a real host would have: the server and the store by the hub's address, its own local state."""
        hub = self.hub_address(host)
        (self.tmp / host).mkdir(exist_ok=True)
        (self.tmp / host / "profiles.toml").touch()
        return {**os.environ, **CREDENTIALS,
                "PREFECT_API_URL": f"http://{hub}:4200/api", "PREFECT_HOME": str(self.tmp / host / "prefect"),
                "PREFECT_PROFILES_PATH": str(self.tmp / host / "profiles.toml"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
                "FSSPEC_S3_ENDPOINT_URL": f"http://{hub}:5000", "NODECORE_ARTIFACTS_KEY": SIGNING_KEY,
                "NODECORE_HOST_LABEL": host, CACHE_ENV: str(self.tmp / host / "working-copy"),
                "NODECORE_SLOT_DIR": str(self.tmp / host / "slots")}

    def hub_env(self) -> dict[str, str]:
        """The hub's own: the Prefect server on its loopback, its own Prefect home."""
        (self.tmp / "hub-profiles.toml").touch()
        return {**os.environ, **CREDENTIALS, "PREFECT_HOME": str(self.tmp / "hub"),
                "PREFECT_PROFILES_PATH": str(self.tmp / "hub-profiles.toml"),
                "PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def start(self, namespace: str, command: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
        out = (self.tmp / f"{log}.log").open("wb")
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *command], env=env, cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    suffix = uuid.uuid4().hex[:5]
    net = Network(hub=f"nc-hub-{suffix}", hosts={h: f"nc-{h}-{suffix}" for h in HOSTS},
                  tmp=tmp_path_factory.mktemp("hosts"), processes=[])
    client_link = f"nc{CLIENT_NET}r{suffix}"
    try:
        _ip("netns", "add", net.hub)
        _ip("-n", net.hub, "link", "set", "lo", "up")
        for host, namespace in net.hosts.items():
            i = HOSTS[host]
            _ip("netns", "add", namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("link", "add", f"nc{i}h{suffix}", "type", "veth", "peer", "name", f"nc{i}w{suffix}")
            _ip("link", "set", f"nc{i}h{suffix}", "netns", net.hub)
            _ip("link", "set", f"nc{i}w{suffix}", "netns", namespace)
            _ip("-n", net.hub, "addr", "add", f"10.231.{i}.1/24", "dev", f"nc{i}h{suffix}")
            _ip("-n", namespace, "addr", "add", f"10.231.{i}.2/24", "dev", f"nc{i}w{suffix}")
            _ip("-n", net.hub, "link", "set", f"nc{i}h{suffix}", "up")
            _ip("-n", namespace, "link", "set", f"nc{i}w{suffix}", "up")
        _ip("link", "add", client_link, "type", "veth", "peer", "name", f"nc{CLIENT_NET}h{suffix}")
        _ip("link", "set", f"nc{CLIENT_NET}h{suffix}", "netns", net.hub)
        _ip("-n", net.hub, "addr", "add", f"10.231.{CLIENT_NET}.1/24", "dev", f"nc{CLIENT_NET}h{suffix}")
        _ip("-n", net.hub, "link", "set", f"nc{CLIENT_NET}h{suffix}", "up")
        _ip("addr", "add", f"10.231.{CLIENT_NET}.2/24", "dev", client_link)
        _ip("link", "set", client_link, "up")

        hub_env = net.hub_env()
        server = net.start(net.hub, [sys.executable, "-m", "prefect", "server", "start", "--host", "0.0.0.0",
                                     "--port", "4200"], hub_env, "hub-prefect")
        s3 = net.start(net.hub, [sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"], hub_env,
                       "hub-s3")
        hub = net.hub_address(None)
        _wait_for(f"http://{hub}:4200/api/health", server, net.tmp / "hub-prefect.log")
        _wait_for(f"http://{hub}:5000/moto-api/", s3, net.tmp / "hub-s3.log")
        yield net
    finally:
        for process in net.processes:
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
        for namespace in (*net.hosts.values(), net.hub):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", client_link], capture_output=True)


@pytest.fixture
def as_client(network: Network, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point this process (the dispatching host) at the hub; yield a fresh bucket's URL."""
    import fsspec.config
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    hub = network.hub_address(None)
    for key, value in {**CREDENTIALS, "NODECORE_ARTIFACTS_KEY": SIGNING_KEY,
                       "PREFECT_API_URL": f"http://{hub}:4200/api", CACHE_ENV: str(network.tmp / "client")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": f"http://{hub}:5000"})
    bucket = f"nodecore-{uuid.uuid4().hex[:10]}"
    ArtifactStore(f"s3://{bucket}").fs.mkdir(bucket)
    with temporary_settings(updates={PREFECT_API_URL: f"http://{hub}:4200/api",
                                     PREFECT_UI_URL: f"http://{hub}:4200"}):
        yield f"s3://{bucket}/grid"
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):  # sent now, while the hub still answers
            worker.drain_all(timeout=30)


def _tiny(location: str, **run: object) -> dict:
    return {"dataset": {"n_train": 64, "n_test": 64}, "training": {"epochs": 4, "checkpoint_every": 2},
            "output": {"trajectory_samples": 16, "trajectory_points": 5, "plot_samples": 10},
            "solvers": ["euler", "rk4"], "devices": ["cpu"],
            "run": {"artifacts_dir": location, "retry_delay_seconds": 0, **run}}


def test_a_grid_runs_on_two_hosts_through_s3_and_reruns_cached_from_a_third(network: Network, as_client: str) -> None:
    from flows.train_flow import train_flow

    ensure_work_pools([POOL])
    deploy(cell_deployment(POOL))
    for host in ("w1", "w2"):  # one flow run at a time each, so the two cells take both hosts
        network.start(network.hosts[host], [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                                            "--type", "process", "--limit", "1", "--name", host],
                      network.host_env(host), f"{host}-worker")

    config = PipelineConfig.model_validate(_tiny(as_client, executor="deployments", cpu_pools=[POOL],
                                                 cell_timeout_seconds=300))
    summary = train_flow(config)
    store = ArtifactStore(as_client)
    recorded = json.loads(store.read_bytes("summary.json"))
    hosts = {cell["trained"]["data"]["cell"]: cell["trained"]["data"]["host"] for cell in recorded["cells"]}
    assert sorted(hosts) == ["euler@cpu", "rk4@cpu"] and set(hosts.values()) == {"w1", "w2"}, hosts
    assert [row["cell"] for row in summary["rows"]] == ["euler@cpu", "rk4@cpu"]
    store.fs.invalidate_cache()
    keys = {path[len(store.base) + 1:] for path in store.fs.find(store.base)}
    stages = {key.split("/")[0] for key in keys if key.endswith("/manifest.json")}
    assert stages == {"generate-dataset", "build-vector-field", "train", "evaluate", "integrate-trajectories",
                      "render"}, sorted(keys)
    assert not any(k.startswith("cells/") or "resume" in k or ".partial-" in k for k in keys), sorted(keys)

    argv = ["--dataset.n_train", "64", "--dataset.n_test", "64", "--training.epochs", "4",
            "--training.checkpoint_every", "2", "--output.trajectory_samples", "16", "--output.trajectory_points",
            "5", "--output.plot_samples", "10", "--solvers", "euler", "rk4", "--devices", "cpu",
            "--run.retry_delay_seconds", "0", "--run.artifacts_dir", as_client]
    rerun = subprocess.run(["ip", "netns", "exec", network.hosts["w3"], sys.executable, "flows/train_flow.py",
                            *argv], env=network.host_env("w3"), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    table = [line.split() for line in rerun.stdout.splitlines() if line.split()[:1] in (["euler@cpu"], ["rk4@cpu"])]
    assert len(table) == 2 and all(row[-2:] == ["cached", "all"] for row in table), rerun.stdout[-2000:]
    assert any((network.tmp / "w3" / "working-copy").rglob("*.png"))  # w3 read the plots from the bucket


def _kill_host(namespace: str) -> None:
    """Every process of the host at once, as a power cut would (no process gets to report anything)."""
    pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass


def test_a_host_killed_mid_training_has_its_cell_resumed_on_the_other(network: Network, as_client: str) -> None:
    from flows.train_flow import train_flow

    pool = "net-kill"
    ensure_work_pools([pool])
    deploy(cell_deployment(pool))
    doomed = {**network.host_env("w1"), "NODECORE_FAULTS": "train:hang"}  # stops at its first checkpoint
    network.start(network.hosts["w1"], [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
                                        "--type", "process", "--limit", "1"], doomed, "w1-doomed-worker")
    store = ArtifactStore(as_client)

    def kill_w1_once_its_checkpoint_is_in_the_bucket() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            store.fs.invalidate_cache()
            if any(path.endswith("/resume.json") for path in store.fs.find(f"{store.base}/train")):
                _kill_host(network.hosts["w1"])
                network.start(network.hosts["w2"], [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                                                    pool, "--type", "process", "--limit", "1"],
                              network.host_env("w2"), "w2-rescue-worker")
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_w1_once_its_checkpoint_is_in_the_bucket, daemon=True)
    killer.start()
    config = _tiny(as_client, executor="deployments", cpu_pools=[pool], cell_timeout_seconds=30, retries=1)
    config["solvers"] = ["euler"]
    summary = train_flow(PipelineConfig.model_validate(config))
    killer.join(timeout=5)
    (cell,) = json.loads(store.read_bytes("summary.json"))["cells"]
    trained = cell["trained"]["data"]
    assert trained["host"] == "w2" and trained["resumed_from_epoch"] == 2, trained  # w1's checkpoint, from S3
    assert [row["cell"] for row in summary["rows"]] == ["euler@cpu"]


DASK = str(Path(sys.executable).with_name("dask"))
DASK_PORT = 8786
DASK_HOSTS = ("w1", "w2")
STAGE_TASKS = ("train_cell", "evaluate_cell", "integrate_trajectories", "render_plots")


def _wait_for_port(host: str, port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{host}:{port} did not come up (exit {process.poll()}):\n"
                                   f"{log.read_text()[-3000:]}")
            time.sleep(0.3)


def _dask_network(network: Network, up: bool) -> None:
    """What a Dask cluster needs of the network beyond what the work-pool hosts do, or (``up=False``) undo it.

    * Workers fetch each other's results directly (a task may run where its upstream's result is not), so w1
      and w2 reach each other: the hub forwards between their links for this test.
    * Each task brings the *flow process's* Prefect settings (prefect-dask serializes its ``SettingsContext``
      into every task), so a worker talks to the API at the URL this process uses, not at its own
      ``PREFECT_API_URL``. On real hosts that is one name that every host resolves; here the hub answers on a
      different address per link, so w1 and w2 get a route to the address this process uses (still the hub
      itself: no host reaches this process).
    """
    hub, action = network.hub_address(None), "add" if up else "del"
    subprocess.run(["ip", "netns", "exec", network.hub, "sysctl", "-qw", f"net.ipv4.ip_forward={int(up)}"],
                   check=True, capture_output=True)
    for host in DASK_HOSTS:
        gateway = network.hub_address(host)
        others = [f"10.231.{HOSTS[h]}.0/24" for h in DASK_HOSTS if h != host]
        for destination in (f"{hub}/32", *others):
            done = subprocess.run(["ip", "-n", network.hosts[host], "route", action, destination, "via", gateway],
                                  check=False, capture_output=True, text=True)
            if up and done.returncode != 0:
                raise RuntimeError(f"route {destination} on {host}: {done.stderr.strip()}")


@pytest.fixture
def dask_cluster(network: Network) -> Iterator[tuple[str, dict[str, str]]]:
    """``dask scheduler`` on the hub, one single-threaded ``dask worker`` on each of w1 and w2, each with its host's
    environment; yields the scheduler's address as this process sees it and each worker's address by host.

    The processes are killed, and the network is put back, at the end of the test (the module's bookkeeping
    would kill them only at its own end).
    """
    from distributed import Client

    started: list[subprocess.Popen] = []
    try:
        _dask_network(network, up=True)
        scheduler = network.start(network.hub, [DASK, "scheduler", "--host", "0.0.0.0", "--port", str(DASK_PORT),
                                                "--no-dashboard"], network.hub_env(), "hub-dask-scheduler")
        started.append(scheduler)
        _wait_for_port(network.hub_address(None), DASK_PORT, scheduler, network.tmp / "hub-dask-scheduler.log")
        for host in DASK_HOSTS:
            started.append(network.start(network.hosts[host], [
                DASK, "worker", f"tcp://{network.hub_address(host)}:{DASK_PORT}", "--name", host, "--nthreads", "1",
                "--nworkers", "1", "--no-dashboard", "--local-directory", str(network.tmp / host / "dask")],
                network.host_env(host), f"{host}-dask-worker"))
        address = f"tcp://{network.hub_address(None)}:{DASK_PORT}"
        with Client(address, timeout=30) as client:
            client.wait_for_workers(len(DASK_HOSTS), timeout=60)
            workers = {info["name"]: worker for worker, info in client.scheduler_info()["workers"].items()}
        assert sorted(workers) == sorted(DASK_HOSTS), workers
        assert all(workers[h].startswith(f"tcp://10.231.{HOSTS[h]}.2:") for h in DASK_HOSTS), workers
        yield address, workers
    finally:
        for process in started:
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
        _dask_network(network, up=False)


def _stages_by_host(stream: list[dict], workers: dict[str, str]) -> dict[str, list[str]]:
    """The stage tasks the scheduler saw run, by the host of the worker that ran each (sorted task names)."""
    host_of = {address: host for host, address in workers.items()}
    ran: dict[str, list[str]] = {}
    for record in stream:
        name = record["key"].rsplit("-", 1)[0]
        if name in STAGE_TASKS:
            ran.setdefault(host_of.get(record["worker"], record["worker"]), []).append(name)
    return {host: sorted(names) for host, names in ran.items()}


def test_the_grid_runs_on_a_dask_cluster_across_hosts_through_s3_and_reruns_cached(
        network: Network, as_client: str, dask_cluster: tuple[str, dict[str, str]]) -> None:
    from distributed import Client

    from flows.train_flow import train_flow

    address, workers = dask_cluster
    config = PipelineConfig.model_validate(_tiny(as_client, executor="dask", dask_address=address))
    with Client(address, timeout=30) as client:
        client.get_task_stream()  # starts the scheduler's record of which worker ran which task
        since = time.time()
        summary = train_flow(config)
        ran = _stages_by_host(client.get_task_stream(start=since), workers)
        rerun = train_flow(config)

    assert [row["cell"] for row in summary["rows"]] == ["euler@cpu", "rk4@cpu"]
    # Every stage task of the two cells ran in a Dask worker, and each host trained one cell: the trainings are
    # spread over the hosts (flows/placement.py), where Dask alone favours the worker holding their inputs.
    assert sorted(ran) == sorted(DASK_HOSTS), ran
    assert all(ran[host].count("train_cell") == 1 for host in DASK_HOSTS), ran
    assert sorted(name for names in ran.values() for name in names) == sorted(STAGE_TASKS * 2), ran
    store = ArtifactStore(as_client)
    recorded = json.loads(store.read_bytes("summary.json"))
    # The training's own record of its host (NODECORE_HOST_LABEL, from each worker's environment).
    hosts = {cell["trained"]["data"]["cell"]: cell["trained"]["data"]["host"] for cell in recorded["cells"]}
    assert sorted(hosts) == ["euler@cpu", "rk4@cpu"] and set(hosts.values()) == set(DASK_HOSTS), hosts
    assert all(hosts[cell] in ran and "train_cell" in ran[hosts[cell]] for cell in hosts), (hosts, ran)

    store.fs.invalidate_cache()
    keys = {path[len(store.base) + 1:] for path in store.fs.find(store.base)}
    stages = {key.split("/")[0] for key in keys if key.endswith("/manifest.json")}
    assert stages == {"generate-dataset", "build-vector-field", "train", "evaluate", "integrate-trajectories",
                      "render"}, sorted(keys)
    for cell in recorded["cells"]:  # each cell's stage outputs are the manifests in the bucket
        for output in cell.values():
            assert f"{output['stage']}/{output['key']}/manifest.json" in keys, (output, sorted(keys))
    assert not any(k.startswith("cells/") or "resume" in k or ".partial-" in k for k in keys), sorted(keys)

    assert [(row["cell"], row["cached"]) for row in rerun["rows"]] == [("euler@cpu", "all"), ("rk4@cpu", "all")]
    rerecorded = json.loads(store.read_bytes("summary.json"))
    assert {c["trained"]["data"]["cell"]: c["trained"]["data"]["host"] for c in rerecorded["cells"]} == hosts
