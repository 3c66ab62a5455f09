"""A real two-node Ray cluster on loopback for integration tests: the session-scoped ``ray_cluster`` fixture.

Use it with ``pytest_plugins = ["ray_cluster"]`` in a test module; connect with the GCS address it yields
(``ray.init(address="127.0.0.1:PORT")``, not Ray Client). What Ray 2.60 does on one machine, and why the
fixture is built the way it is:

- A node's servers (GCS, raylet, agents, workers) bind to loopback only when the node's IP is a loopback
  literal, otherwise to all interfaces; and unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set, Ray swaps
  127.0.0.1 for the machine's external address (in ``ray start`` and in ``ray.init`` alike). So the head,
  the second node and the driver all run with it set to 0.
- With that setting ``ray start --address`` refuses to start a second node ("Multi-node Ray clusters are not
  supported on Windows and OSX"), and without it the node would join on the external address. The head is
  started with the real ``ray start --head``; the second node with Ray's own ``ray start`` command, run by
  this file as a script (``python tests/ray_cluster.py --address 127.0.0.1:PORT ...``) with only that refusal
  lifted (:func:`_ray_start_on_loopback`). Everything else is ``ray start`` as shipped.
- Each node has its own ``--temp-dir`` (allowed per node in Ray 2.60): its own session folder, logs and
  sockets, and the ``ray_current_cluster`` file lands there, not in ``/tmp/ray``, so a plain ``ray.init()``
  elsewhere on the machine (another test's local Ray) never joins this cluster by accident.
- Free ports are picked for the GCS, the Ray Client server, the head's two metrics servers and the second
  dashboard agent (Ray's fixed defaults would clash between the nodes, and with other users' Ray on a
  shared machine); worker ports are random (0). Token auth is off (``RAY_AUTH_MODE=disabled``): no
  ``~/.ray/auth_token`` is written.
- Teardown never runs ``ray stop`` (it kills every Ray on the machine, other users' too). Each start command
  runs in a new session (setsid) and every process Ray starts for that node stays in that session: the
  fixture kills exactly the processes of its two sessions (SIGTERM, then SIGKILL what is left).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

RAY = Path(sys.executable).with_name("ray")
HEAD_RESOURCE, SECOND_RESOURCE = "head_node", "second_node"  # custom resources that tell the nodes apart
NODE_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 as the node address: bind to loopback
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
}
OBJECT_STORE_BYTES = 100 * 1024 * 1024
START_TIMEOUT_S = 90


@dataclass(frozen=True)
class Listener:
    """One listening socket of a cluster process (TCP in LISTEN state, or a bound UDP socket)."""

    pid: int
    process: str
    proto: str
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        addr = ipaddress.ip_address(self.ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # [::ffff:127.0.0.1] (gRPC's dual-stack sockets) is loopback
        return addr.is_loopback


@dataclass
class LoopbackCluster:
    """A running two-node cluster: ``address`` is the GCS address; ``sessions`` the ids of the sessions that
    hold every process of the cluster (one per ``ray start``); ``recorded`` what was in them after start."""

    address: str
    root: Path
    head_node_id: str
    second_node_id: str
    sessions: tuple[int, ...]
    recorded: list[psutil.Process] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment a driver in a child process needs to join (``recrank score --address ...``)."""
        return {**os.environ, **NODE_ENV}

    def processes(self) -> list[psutil.Process]:
        """The live processes of the cluster: members of its sessions (raylets' workers included)."""
        out = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions:
                    out.append(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return out

    def listeners(self) -> list[Listener]:
        """Every listening TCP socket and bound UDP socket of the cluster's processes."""
        return listening_sockets(self.processes())


def listening_sockets(procs: Iterable[psutil.Process]) -> list[Listener]:
    """The TCP sockets in LISTEN state and the unconnected UDP sockets of ``procs``."""
    out = []
    for proc in procs:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except psutil.Error:  # exited meanwhile
            continue
        for c in conns:
            tcp = c.type == socket.SOCK_STREAM
            if (tcp and c.status == psutil.CONN_LISTEN) or (not tcp and not c.raddr):
                out.append(Listener(proc.pid, name, "tcp" if tcp else "udp", c.laddr.ip, c.laddr.port))
    return out


# Ray's fixed default ports (GCS, dashboard, Ray Client, agent HTTP, autoscaler and dashboard metrics): every
# one the cluster uses is given explicitly, and a free port picked for it must not be one of these either.
RAY_DEFAULT_PORTS = frozenset({6379, 8265, 10001, 52365, 44217, 44227})


class Sampler(threading.Thread):
    """Collects the cluster's listening sockets every half second while a job runs (actors come and go), and
    those this process (the driver) opens meanwhile: its core worker's servers."""

    def __init__(self, cluster: LoopbackCluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.seen, self.stop = cluster, set(), threading.Event()
        self.driver = lambda: set(listening_sockets([psutil.Process()]))
        self.before = self.driver()  # whatever else this test process listens on is not Ray's

    def run(self) -> None:
        while not self.stop.is_set():
            self.seen.update(self.cluster.listeners(), self.driver() - self.before)
            self.stop.wait(0.5)


def free_port() -> int:
    """A port free on loopback now (the OS's ephemeral range), never one of Ray's defaults."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port


def _start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run one ``ray start`` in a new session; return the session id (its pid). Raises with the log's tail."""
    with log.open("w") as sink:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **NODE_ENV, **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        rc = proc.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        rc = None
    if rc != 0:
        _kill_sessions((proc.pid,))
        raise RuntimeError(f"{' '.join(cmd[:3])}: rc={rc}\n{log.read_text()[-3000:]}")
    return proc.pid


def start_cluster(object_store_bytes: int = OBJECT_STORE_BYTES) -> LoopbackCluster:
    """Start the head and the second node (1 CPU each, ~100 MB object store), wait for both to be alive."""
    root = Path(tempfile.mkdtemp(prefix="rr-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = [
        "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
        "--object-store-memory", str(object_store_bytes), "--min-worker-port", "0", "--max-worker-port", "0",
        "--disable-usage-stats",
    ]  # fmt: skip
    sessions: list[int] = []
    try:
        head = [
            str(RAY), "start", "--head", "--port", str(port), "--include-dashboard=false",
            "--dashboard-host", "127.0.0.1", "--ray-client-server-port", str(free_port()),
            "--temp-dir", str(root / "head"), "--resources", json.dumps({HEAD_RESOURCE: 1}), *common,
        ]  # fmt: skip
        # The head's metrics servers read their ports from the environment only (defaults 44217 and 44227).
        metrics = {"AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}
        sessions.append(_start(head, root / "head.log", metrics))
        second = [
            sys.executable, __file__, "--address", address, "--temp-dir", str(root / "second"),
            "--dashboard-agent-listen-port", str(free_port()), "--resources", json.dumps({SECOND_RESOURCE: 1}),
            *common,
        ]  # fmt: skip
        sessions.append(_start(second, root / "second.log"))
        head_id, second_id = _wait_for_nodes(address)
    except BaseException:
        _kill_sessions(tuple(sessions))
        shutil.rmtree(root, ignore_errors=True)
        raise
    cluster = LoopbackCluster(address, root, head_id, second_id, tuple(sessions))
    cluster.recorded = cluster.processes()
    return cluster


def _wait_for_nodes(address: str, timeout: float = START_TIMEOUT_S) -> tuple[str, str]:
    """Connect as a driver until ``ray.nodes()`` shows both nodes alive; return (head id, second id)."""
    for key, value in NODE_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from ray._private import ray_constants

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(
            "ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: this process would join "
            "127.0.0.1 through the machine's external address"
        )
    if ray.is_initialized():
        raise RuntimeError("this process is already connected to a Ray: the cluster fixture needs it free")
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ids = {
                r: n["NodeID"]
                for n in ray.nodes()
                if n["Alive"] and n["NodeManagerAddress"] == "127.0.0.1"
                for r in (HEAD_RESOURCE, SECOND_RESOURCE)
                if r in n["Resources"]
            }
            if len(ids) == 2:
                return ids[HEAD_RESOURCE], ids[SECOND_RESOURCE]
            if time.monotonic() > deadline:
                raise RuntimeError(f"alive on 127.0.0.1 after {timeout:.0f} s: {sorted(ids)}")
            time.sleep(0.5)
    finally:
        ray.shutdown()


def _kill_sessions(sessions: tuple[int, ...], recorded: Iterable[psutil.Process] = (), grace: float = 3) -> list[int]:
    """SIGTERM every process of ``sessions`` and the ``recorded`` ones still running, SIGKILL what is left
    after ``grace``; return the pids still alive after that (none, normally).

    ``recorded`` is belt and braces (a process that left its session); psutil checks each one's start time
    before signalling it, so a recycled pid is never hit."""
    recorded = list(recorded)

    def members() -> list[psutil.Process]:
        out = [p for p in recorded if p.is_running()]
        known = {p.pid for p in out}
        for pid in psutil.pids():
            try:
                if os.getsid(pid) in sessions and pid not in known:
                    out.append(psutil.Process(pid))
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return out

    procs = members()
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in [*alive, *(p for p in members() if p not in procs)]:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in members()]


def stop_cluster(cluster: LoopbackCluster) -> None:
    left = _kill_sessions(cluster.sessions, cluster.recorded)
    shutil.rmtree(cluster.root, ignore_errors=True)
    if left:
        raise RuntimeError(f"cluster processes still alive: {left}")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LoopbackCluster]:
    """A two-node Ray cluster on loopback for the session (~30 s to start on 2 cores); torn down by pid."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def _ray_start_on_loopback(argv: list[str]) -> None:
    """``ray start ARGV`` for a non-head node on loopback (see the module docstring).

    ``ray start`` checks ``ENABLE_RAY_CLUSTER`` before joining a head, and Ray's address resolution reads
    the same flag to decide whether to replace 127.0.0.1: the CLI module alone gets a view of the constants
    with the flag on, so the check passes while the addresses stay on loopback.
    """
    import types

    from ray._private import ray_constants
    from ray.scripts import scripts

    assert not ray_constants.ENABLE_RAY_CLUSTER, "run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
    view = {k: v for k, v in vars(ray_constants).items() if not k.startswith("__")}
    scripts.ray_constants = types.SimpleNamespace(**{**view, "ENABLE_RAY_CLUSTER": True})
    scripts.cli(["start", *argv], prog_name="ray")


if __name__ == "__main__":
    _ray_start_on_loopback(sys.argv[1:])
