"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

By default there is no scheduler and no kubelet: pods are admitted (webhooks, ServiceAccount
admission, RBAC) and stored, never run. With ``node=True`` the cluster also gets a node
(containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS; see :mod:`oshu_localkube.node`)
and pods really run; the apiserver then listens on the node address instead of 127.0.0.1
so pods reach it through the ``kubernetes`` Service. The controller-manager is there because a cluster without it
has no garbage collection of owned objects, never finishes deleting a namespace and never
creates the ``default`` ServiceAccount, which the ServiceAccount admission plugin requires
for every pod.

Each cluster owns one state directory: fresh certificates, the kubeconfig, etcd's data, one
log file per component and ``cluster.json`` (ports and the pids it started). Stopping kills
only those pids (each leads its own process group) after checking they still run our
binaries, then removes the directory. A cluster whose owner died is cleaned up by the next
start. Two clusters never share ports or directories.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from . import build, pki
from . import node as node_module

_T = TypeVar("_T")

STATE_FILE = "cluster.json"
SERVICE_CIDR = "10.96.0.0/16"  # allocation only: nothing ever routes to it
SERVICE_IP = "10.96.0.1"
CONTEXT = "oshu-local"
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")

# Controllers whose job needs nodes, volumes attached to nodes or a cloud: pointless here.
DISABLED_CONTROLLERS = (
    "node-ipam-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "device-taint-eviction-controller",
    "persistentvolume-attach-detach-controller",
    "ttl-controller",
    "selinux-warning-controller",
)

# Proxy settings of the caller must not route apiserver -> webhook or kubectl -> apiserver.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ClusterError(RuntimeError):
    """The control plane could not be started, found or reached; the message says why."""


class CommandError(subprocess.CalledProcessError):
    """A kubectl/helm call failed; unlike its base class, ``str()`` includes stderr."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}\nstdout: {(self.stdout or '').strip()[-2000:]}"
        )


def runtime_root() -> Path:
    """Parent of all state directories of this user's clusters (swept for dead ones)."""
    configured = os.environ.get("OSHU_LOCALKUBE_RUN_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"oshu-localkube-{os.getuid()}"


@dataclass
class _Process:
    """A started component: enough to find, verify and kill it from another process later."""

    name: str
    pid: int
    exe: str
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _runs_binary(self.pid, self.exe)

    def as_state(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "exe": self.exe}


def _runs_binary(pid: int, exe: str) -> bool:
    """True if ``pid`` is alive (not a zombie) and still runs ``exe``: a recycled pid is not ours."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return False
    return argv0 == exe and state not in ("Z", "X")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_PRCTL: Callable[..., int] | None
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, called after
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: die with the thread that started us (a test session killed hard).

    SIGKILL, not SIGTERM: the owner is gone, its state is garbage, and a graceful apiserver
    shutdown with etcd going away at the same time can take many seconds."""
    PR_SET_PDEATHSIG = 1
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without proxy settings (all our traffic is loopback)."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.lower() in _PROXY_VARIABLES:
            del env[key]
    return env


class LocalCluster:
    """One control plane. Use as a context manager, or ``start()``/``stop()``.

    ``state_dir=None`` makes a fresh temporary directory per start. ``daemon=True`` (the CLI)
    leaves the processes running when this Python process exits; otherwise they are tied to
    it and die with it.
    """

    def __init__(
        self,
        state_dir: Path | str | None = None,
        *,
        node: bool = False,
        daemon: bool = False,
        ready_timeout: float = 120.0,
        gomaxprocs: int | None = None,
        log: Log = _stderr,
    ) -> None:
        self._requested_dir = Path(state_dir) if state_dir is not None else None
        self.daemon = daemon
        self.ready_timeout = ready_timeout
        self.gomaxprocs = gomaxprocs or int(os.environ.get("OSHU_KUBE_GOMAXPROCS", "2"))
        self._log = log
        self._processes: list[_Process] = []
        self.state_dir: Path = self._requested_dir or runtime_root() / "not-started"
        self._owns_state_dir = False  # true once start() made it (or attach() found it)
        self.ports: dict[str, int] = {}
        self.server = ""
        self.startup_seconds: float | None = None
        self.binaries: dict[str, Path] = {}
        #: Set for a cluster with a node (``node=True``); its addresses are machine-wide.
        self.node_network: node_module.NodeNetwork | None = node_module.NodeNetwork() if node else None
        self.node_startup_seconds: float | None = None

    @property
    def node(self) -> node_module.Node | None:
        """The node's API (containerd socket, image import, addresses), or None without a node."""
        return node_module.Node(self, self.node_network) if self.node_network is not None else None

    @property
    def api_host(self) -> str:
        """Where the apiserver listens: the node address with a node (pods reach it), else loopback."""
        return self.node_network.node_ip if self.node_network is not None else "127.0.0.1"

    # -- paths ---------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters), certificates embedded: safe to copy elsewhere."""
        return self.state_dir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        """Symlinks to this cluster's pinned kubectl, helm and components: put it first on PATH."""
        return self.state_dir / "bin"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm_path(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def ca_cert(self) -> Path:
        """CA that signed the apiserver's serving certificate."""
        return self.state_dir / "pki" / "ca.crt"

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Build (or reuse) the binaries, start the components and wait until ready."""
        if self._processes:
            raise ClusterError(f"cluster in {self.state_dir} is already started")
        tools = KUBE_TOOLS + node_module.NODE_TOOLS if self.node_network is not None else KUBE_TOOLS
        if self.node_network is not None:
            problems = node_module.missing_prerequisites()
            if problems:
                raise node_module.NodeError("this machine cannot run the node: " + "; ".join(problems))
        self.binaries = build.ensure_built(tools, log=self._log)
        if self.node_network is not None:
            self.binaries["containerd"] = Path(shutil.which("containerd") or "containerd")  # Debian's
        sweep_dead_clusters(log=self._log)
        for attempt in range(3):
            self._prepare_state_dir()
            started = time.monotonic()
            try:
                if self.node_network is not None:
                    node_module.claim(self)  # NodeBusyError if another node cluster runs
                    node_module.setup_host(self.node_network)  # routes first, before any component
                self._launch_all()
                self.startup_seconds = time.monotonic() - started
                return self
            except _PortClash as clash:
                self._log(f"port clash on attempt {attempt + 1} ({clash}); retrying with new ports")
                self.stop()
            except node_module.NodeBusyError:
                self.stop()  # nothing ran: no logs worth keeping (waiting callers retry often)
                raise
            except BaseException:
                self.stop(keep_logs=True)
                raise
        raise ClusterError("could not find free loopback ports after 3 attempts")

    def stop(self, *, keep_logs: bool = False) -> None:
        """Kill our processes (TERM, then KILL after a grace period) and remove the state dir.

        With a node, first: the kubelet, every container, containerd and its shims, kube-proxy
        and its chains, then every mount, cgroup, route, address and interface of the node."""
        if self.node_network is not None and self._owns_state_dir:
            self._stop_node()
        for process in reversed(self._processes):
            # A node cluster's apiserver waits out any grace on SIGTERM (10 s measured); its
            # state is thrown away, so it gets 3 s.
            _terminate(process, grace=3.0 if self.node_network is not None else 10.0)
        self._processes = []
        if not self._owns_state_dir or not self.state_dir.exists():
            return
        remaining = node_module.mounts_under(self.state_dir)
        if remaining:  # never rmtree through a live mount
            message = f"mounts remain under {self.state_dir}: {remaining}"
            if keep_logs:  # a failed start: its own error matters more than this one
                self._log(message)
                return
            raise ClusterError(message)
        if keep_logs:
            # Failed start: keep only the logs, somewhere the error message points to.
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)
            for item in self.state_dir.iterdir():
                if item.is_dir() and not item.is_symlink():
                    if item.name != "logs":
                        shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)
            return
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._owns_state_dir = False

    def is_running(self) -> bool:
        """All our processes are alive (says nothing about readiness)."""
        return bool(self._processes) and all(process.alive() for process in self._processes)

    def is_ready(self) -> bool:
        """Running, and the apiserver answers /readyz with 200."""
        return self.is_running() and self._http_ok("/readyz")

    @classmethod
    def attach(cls, state_dir: Path | str, *, log: Log = _stderr) -> LocalCluster:
        """The cluster recorded in ``state_dir`` (started by another process, e.g. the CLI)."""
        state_dir = Path(state_dir)
        try:
            state = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError) as error:
            raise ClusterError(f"no cluster recorded in {state_dir}: {error}") from None
        cluster = cls(state_dir, daemon=state.get("daemon", True), log=log)
        cluster.ports = {k: int(v) for k, v in state["ports"].items()}
        cluster.server = state["server"]
        cluster.binaries = {k: Path(v) for k, v in state.get("binaries", {}).items()}
        if state.get("node"):
            cluster.node_network = node_module.NodeNetwork(**state["node"])
        cluster._processes = [_Process(p["name"], int(p["pid"]), p["exe"]) for p in state["processes"]]
        cluster._owns_state_dir = True
        return cluster

    def describe(self) -> dict[str, object]:
        return {
            "state_dir": str(self.state_dir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "running": self.is_running(),
            "processes": {p.name: {"pid": p.pid, "alive": p.alive()} for p in self._processes},
            "ports": self.ports,
            "node": self.node.describe() if self.node is not None else None,
        }

    # -- talking to it -------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for kubectl/helm/clients: our kubeconfig, our binaries first, no proxies."""
        env = clean_env()
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECACHEDIR"] = str(self.state_dir / "kube-cache")
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(self.state_dir / "helm" / kind.lower())
        env.update(extra or {})
        return env

    def kubectl(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run our pinned kubectl against this cluster; raises :class:`CommandError` on failure
        unless ``check=False``. Keyword arguments go to :func:`subprocess.run`."""
        return self._run(self.kubectl_path, args, kwargs)

    def helm(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run our pinned helm against this cluster (own helm home inside the state dir)."""
        return self._run(self.helm_path, args, kwargs)

    def _run(self, binary: Path, args: Sequence[str], kwargs: dict[str, object]) -> subprocess.CompletedProcess[str]:
        check = bool(kwargs.pop("check", True))
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        kwargs["env"] = self.env(kwargs.get("env"))  # type: ignore[arg-type]
        command = [str(binary), *args]
        result = subprocess.run(command, **kwargs)  # type: ignore[call-overload]
        if check and result.returncode != 0:
            raise CommandError(result.returncode, command, result.stdout, result.stderr)
        return result

    def request(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` from the apiserver as admin (status, body): for health checks."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(self.state_dir / "pki" / "admin.crt", self.state_dir / "pki" / "admin.key")
        connection = http.client.HTTPSConnection(
            self.api_host, self.ports["apiserver"], context=context, timeout=timeout
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    # -- internals -----------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        if self._requested_dir is None:
            runtime_root().mkdir(parents=True, exist_ok=True, mode=0o700)
            self.state_dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=runtime_root()))
        else:
            self.state_dir = self._requested_dir
            if (self.state_dir / STATE_FILE).exists():
                previous = LocalCluster.attach(self.state_dir, log=self._log)
                if previous.is_running():
                    raise ClusterError(
                        f"a cluster is already running from {self.state_dir} (server {previous.server}); stop it first"
                    )
                self._log(f"cleaning up a crashed cluster in {self.state_dir}")
                previous.stop()
            elif self.state_dir.exists():
                shutil.rmtree(self.state_dir)
            self.state_dir.mkdir(parents=True, mode=0o700)
        self._owns_state_dir = True
        (self.state_dir / "logs").mkdir()
        self.bin_dir.mkdir()
        for tool, path in self.binaries.items():
            (self.bin_dir / tool).symlink_to(path)

    def _launch_all(self) -> None:
        names = ["etcd", "etcd-peer", "controller-manager"]
        if self.node_network is not None:
            names += ["scheduler", "kubelet-healthz", "proxy-healthz", "proxy-metrics", "dns-ready", "dns-health"]
        self.ports = {name: _free_port() for name in names}
        self.ports["apiserver"] = _free_port(self.api_host)
        self.server = f"https://{self.api_host}:{self.ports['apiserver']}"
        net = self.node_network
        certs = pki.create(
            self.state_dir / "pki",
            service_ip=SERVICE_IP,
            extra_apiserver_names=(net.node_ip,) if net is not None else (),
            node_name=net.node_name if net is not None else None,
            node_ip=net.node_ip if net is not None else None,
        )
        self._write_kubeconfigs(certs)
        deadline = time.monotonic() + self.ready_timeout

        self._spawn("etcd", self._etcd_args(certs))
        self._spawn("kube-apiserver", self._apiserver_args(certs))
        self._wait(deadline, "kube-apiserver /readyz", lambda: self._http_ok("/readyz"))

        # Only now: started earlier, it exits on finding RBAC not yet bootstrapped.
        self._spawn("kube-controller-manager", self._controller_manager_args(certs))
        # The ServiceAccount controller creating "default" proves the controller-manager
        # is up, authorised and reconciling: what namespaces in tests depend on.
        self._wait(deadline, "ServiceAccount default/default", self._default_service_account_exists)
        if self.node_network is not None:
            self._launch_node(deadline)

    def _launch_node(self, deadline: float) -> None:
        """containerd, then the kubelet, scheduler, kube-proxy and CoreDNS; ready = the Node is
        Ready and untainted and CoreDNS has synced (pods can be scheduled and resolve names)."""
        node = self.node
        assert node is not None
        started = time.monotonic()
        node_module.prepare_cgroup_root()
        node.write_configs(self.ports)
        self.kubectl("apply", "-f", "-", input=json.dumps(node_module.rbac_manifest()))
        self._spawn("containerd", node.containerd_args())
        self._wait(deadline, "containerd", node.containerd_ready)
        node.import_pause_image()
        self._spawn("kubelet", node.kubelet_args())
        self._spawn("kube-scheduler", node.scheduler_args(self.ports["scheduler"]))
        self._spawn("kube-proxy", node.kube_proxy_args())
        self._spawn("coredns", node.coredns_args())
        self._wait(deadline, f"Node {node.net.node_name} Ready", node.node_ready)
        self._wait(deadline, "CoreDNS ready", lambda: node.http_ok(self.ports["dns-ready"], "/ready"))
        self._wait(deadline, "kube-proxy healthz", lambda: node.http_ok(self.ports["proxy-healthz"], "/healthz"))
        self.node_startup_seconds = time.monotonic() - started

    def _stop_node(self) -> None:
        """Tear the node down in the order that leaves nothing behind (see :meth:`stop`)."""
        net = self.node_network
        assert net is not None
        if not node_module.holds_claim(self.state_dir):
            return  # the start failed before claiming (another node cluster runs): touch nothing
        by_name = {process.name: process for process in self._processes}
        for name in ("kubelet", "kube-proxy"):
            if name in by_name:
                _terminate(by_name[name], grace=5.0)
        node_module.kill_cgroup_tree()  # containers go before containerd, so none is left orphaned
        if "containerd" in by_name:
            _terminate(by_name["containerd"], grace=5.0)
        kube_proxy = self.binaries.get("kube-proxy")
        node_module.teardown_host(net, self.state_dir, kube_proxy=kube_proxy, log=self._log)
        node_module.release(self.state_dir)

    def _spawn(self, name: str, args: list[str]) -> None:
        binary = str(self.binaries[name])
        env = clean_env()
        env.pop("KUBECONFIG", None)
        env["GOMAXPROCS"] = str(self.gomaxprocs)
        die_with_parent = not self.daemon and threading.current_thread() is threading.main_thread()
        with open(self.log_path(name), "ab") as log:
            popen = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,  # own process group: stop() kills exactly it
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        self._processes.append(_Process(name, popen.pid, binary, popen))
        self._write_state()  # recorded at once, so a crash right now still leaves a findable pid

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "daemon": self.daemon,
            "owner_pid": None if self.daemon else os.getpid(),
            "binaries": {k: str(v) for k, v in self.binaries.items()},
            "processes": [p.as_state() for p in self._processes],
            "node": dataclasses.asdict(self.node_network) if self.node_network is not None else None,
        }
        tmp = self.state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_dir / STATE_FILE)

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        delay = 0.05
        while True:
            self._check_processes()
            if ready():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {self.ready_timeout:.0f}s waiting for {what}\n{self._log_tails()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _check_processes(self) -> None:
        for process in self._processes:
            if process.alive():
                continue
            log = self.log_path(process.name)
            text = _tail(log, 200)
            if "address already in use" in text:
                raise _PortClash(f"{process.name}: address already in use")
            raise ClusterError(f"{process.name} exited during start-up (logs in {log.parent})\n{self._log_tails()}")

    def _log_tails(self) -> str:
        parts = []
        for process in self._processes:
            log = self.log_path(process.name)
            parts.append(f"--- {process.name} (last lines of {log}) ---\n{_tail(log)}")
        return "\n".join(parts)

    def _http_ok(self, path: str) -> bool:
        try:
            status, _ = self.request(path, timeout=2.0)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def _default_service_account_exists(self) -> bool:
        return self._http_ok("/api/v1/namespaces/default/serviceaccounts/default")

    def _etcd_args(self, certs: pki.ClusterPKI) -> list[str]:
        client = f"https://127.0.0.1:{self.ports['etcd']}"
        peer = f"https://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            "--name=oshu",
            f"--data-dir={self.state_dir / 'etcd-data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=oshu={peer}",
            "--initial-cluster-state=new",
            f"--cert-file={certs.etcd.cert}",
            f"--key-file={certs.etcd.key}",
            f"--trusted-ca-file={certs.ca.cert}",
            "--client-cert-auth=true",
            f"--peer-cert-file={certs.etcd.cert}",
            f"--peer-key-file={certs.etcd.key}",
            f"--peer-trusted-ca-file={certs.ca.cert}",
            "--peer-client-cert-auth=true",
            "--unsafe-no-fsync=true",  # throwaway data: do not pay fsync on a shared disk
            "--log-level=warn",
        ]

    def _apiserver_args(self, certs: pki.ClusterPKI) -> list[str]:
        if certs.node is not None:
            # The node address is an endpoint pods reach: the `kubernetes` Service gets it.
            # The apiserver reaches the kubelet by that InternalIP, verifying its serving cert,
            # with a client cert of its own (logs, exec, port-forward); never anonymously.
            where = [
                f"--bind-address={self.api_host}",
                f"--advertise-address={self.api_host}",
                "--endpoint-reconciler-type=lease",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={certs.ca.cert}",
                f"--kubelet-client-certificate={certs.node.apiserver_kubelet_client.cert}",
                f"--kubelet-client-key={certs.node.apiserver_kubelet_client.key}",
            ]
        else:
            # A loopback advertise address cannot be a Service endpoint (upstream's own test
            # server disables the reconciler for the same reason).
            where = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        return [
            *where,
            f"--secure-port={self.ports['apiserver']}",
            f"--etcd-servers=https://127.0.0.1:{self.ports['etcd']}",
            f"--etcd-cafile={certs.ca.cert}",
            f"--etcd-certfile={certs.apiserver_etcd_client.cert}",
            f"--etcd-keyfile={certs.apiserver_etcd_client.key}",
            f"--tls-cert-file={certs.apiserver.cert}",
            f"--tls-private-key-file={certs.apiserver.key}",
            f"--client-ca-file={certs.ca.cert}",
            # Request-header authentication, as kubeadm configures it: the controller-manager
            # and any aggregated API server read this CA from extension-apiserver-authentication.
            f"--requestheader-client-ca-file={certs.front_proxy_ca.cert}",
            f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={certs.front_proxy_client.cert}",
            f"--proxy-client-key-file={certs.front_proxy_client.key}",
            f"--service-account-key-file={certs.service_account_pub}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # The default plugin set (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity,
            # Mutating/ValidatingAdmissionWebhook, ResourceQuota, ...) plus what kubeadm adds.
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            "--anonymous-auth=false",
            "--profiling=false",
        ]

    def _controller_manager_args(self, certs: pki.ClusterPKI) -> list[str]:
        kubeconfig = self.state_dir / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['controller-manager']}",
            "--controllers=*," + ",".join(f"-{name}" for name in self._disabled_controllers()),
            # Each controller acts as its own ServiceAccount with its bootstrap RBAC role, as on
            # a kubeadm cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={certs.service_account_key}",
            f"--root-ca-file={certs.ca.cert}",
            f"--cluster-signing-cert-file={certs.ca.cert}",
            f"--cluster-signing-key-file={certs.ca.key}",
            "--leader-elect=false",
            "--profiling=false",
        ]

    def _disabled_controllers(self) -> tuple[str, ...]:
        if self.node_network is None:
            return DISABLED_CONTROLLERS
        # With a node, node-lifecycle removes the kubelet's not-ready taint once it is Ready.
        return tuple(name for name in DISABLED_CONTROLLERS if name != "node-lifecycle-controller")

    def _write_kubeconfigs(self, certs: pki.ClusterPKI) -> None:
        import base64

        def data(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        admin = _kubeconfig(
            self.server,
            cluster={"certificate-authority-data": data(certs.ca.cert)},
            user={"client-certificate-data": data(certs.admin.cert), "client-key-data": data(certs.admin.key)},
            user_name="oshu-admin",
        )
        controller_manager = _kubeconfig(
            self.server,
            cluster={"certificate-authority": str(certs.ca.cert)},
            user={
                "client-certificate": str(certs.controller_manager.cert),
                "client-key": str(certs.controller_manager.key),
            },
            user_name="system:kube-controller-manager",
        )
        configs = [(self.kubeconfig, admin), (self.state_dir / "controller-manager.kubeconfig", controller_manager)]
        if certs.node is not None:
            node = self.node
            assert node is not None
            node.dir.mkdir(exist_ok=True)
            for component, files, user_name in (
                ("kubelet", certs.node.kubelet_client, f"system:node:{node.net.node_name}"),
                ("kube-scheduler", certs.node.scheduler, "system:kube-scheduler"),
                ("kube-proxy", certs.node.kube_proxy, "system:kube-proxy"),
                ("coredns", certs.node.coredns, pki.COREDNS_USER),
            ):
                config = _kubeconfig(
                    self.server,
                    cluster={"certificate-authority": str(certs.ca.cert)},
                    user={"client-certificate": str(files.cert), "client-key": str(files.key)},
                    user_name=user_name,
                )
                configs.append((node.kubeconfig_path(component), config))
        for path, config in configs:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(config, handle, indent=2)  # JSON is YAML: every kubeconfig reader takes it


class _PortClash(ClusterError):
    """Another process took one of the ports we picked between picking and binding."""


def _kubeconfig(server: str, *, cluster: dict[str, str], user: dict[str, str], user_name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, **cluster}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user_name}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def _terminate(process: _Process, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it outlives ``grace``."""
    if not process.alive():
        if process.popen is not None:
            process.popen.wait()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=grace)
    else:
        deadline = time.monotonic() + grace
        while process.alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def _owner_alive(state: dict[str, object]) -> bool:
    owner = state.get("owner_pid")
    if not isinstance(owner, int):
        return False
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_clusters(root: Path | None = None, *, log: Log = _stderr) -> list[Path]:
    """Remove clusters under ``root`` left behind by a crashed owner; returns what was removed.

    A non-daemon cluster is dead when the process that started it is gone; a daemon cluster
    when none of its processes runs any more. Directories without a state file are only
    removed once they are an hour old (a start may be writing certificates right now).
    """
    root = root or runtime_root()
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for state_dir in root.iterdir():
        state_file = state_dir / STATE_FILE
        try:
            if not state_file.exists():
                if (
                    state_dir.is_dir()
                    and time.time() - state_dir.stat().st_mtime > 3600
                    and state_dir.name.startswith("cluster-")
                ):
                    shutil.rmtree(state_dir, ignore_errors=True)
                    removed.append(state_dir)
                continue
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        node_state = state.get("node") or {}
        if node_state and node_state.get("slot", "") != node_module.machine_slot():
            continue  # a node cluster of another network namespace: cleaned up from there
        cluster = LocalCluster.attach(state_dir, log=log)
        dead = not cluster.is_running() if state.get("daemon") else not _owner_alive(state)
        if dead:
            log(f"removing leftover cluster {state_dir}")
            try:
                cluster.stop()
            except ClusterError as error:  # never block a new cluster on an old one's leftovers
                log(f"could not fully remove {state_dir}: {error}")
                continue
            removed.append(state_dir)
    return removed


def wait_for(predicate: Callable[[], _T | None], *, timeout: float, what: str, interval: float = 0.2) -> _T:
    """Poll ``predicate`` until it returns something truthy, and return that; raise TimeoutError
    naming ``what`` after ``timeout`` seconds. The one polling helper of the tests and the demo."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


__all__ = (
    "ClusterError",
    "CommandError",
    "LocalCluster",
    "clean_env",
    "runtime_root",
    "sweep_dead_clusters",
    "wait_for",
)
