"""The local executor: the dev stack's one node, running Herald's job pods as processes.

It plays the kubelet's part at the API level, so the real kube-controller-manager's
CronJob → Job → Pod path works without a container runtime:
- it registers a Node and keeps its Ready condition fresh;
- it binds the pods of Herald's Jobs (there is no scheduler) to that Node (pods/binding);
- it runs each pod's container command as a local process with the pod's environment,
  valueFrom resolved as a kubelet would (secretKeyRef, configMapKeyRef, fieldRef), and a
  kubeconfig of the pod's own from a TokenRequest bound to the pod, so each pod acts as
  its ServiceAccount and no two pods share credentials;
- it reports the pod's phase through pods/status, so Jobs and CronJobs complete;
- it honours activeDeadlineSeconds, and on deletion sends SIGTERM, then SIGKILL after
  the grace period, then removes the pod as a kubelet would.

What it does not do: pull or use the image (the command runs from this checkout's
environment), enforce securityContext or resources, restart containers, or serve
`kubectl logs` (each container's output is in the pod's folder under --workdir).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from herald_api.names import MANAGED_BY
from herald_dev.services import _die_with_parent

log = logging.getLogger("herald.executor")

NODE = "herald-local"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 20
RETRY_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 5  # within the 10 s `herald dev down` gives the executor
TOKEN_SECONDS = 48 * 3600
VENV_BIN = str(Path(sys.executable).parent)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """A container cannot be started as its spec says (kubelet: CreateContainerConfigError)."""


@dataclass
class Running:
    """A pod's process, and what the executor is doing about it."""

    namespace: str
    name: str
    container: str
    proc: subprocess.Popen[bytes]
    started: float
    started_at: str
    deadline: float | None  # monotonic time of activeDeadlineSeconds
    killing_at: float | None = None  # SIGKILL then, once SIGTERM was sent
    reason: str = ""  # why it was stopped: DeadlineExceeded, NodeShutdown, or "" (deleted)


def field_value(pod: dict[str, Any], path: str) -> str:
    """A fieldRef's value, for the paths a kubelet supports."""
    meta, spec = pod["metadata"], pod["spec"]
    found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if found:
        return str((meta.get(found[1]) or {}).get(found[2], ""))
    simple = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1",
    }
    if path not in simple:
        raise ConfigError(f"fieldRef {path!r} is not supported by the local executor")
    return str(simple[path])


def is_job_pod(pod: dict[str, Any]) -> bool:
    """Whether a Job controls the pod: the executor binds only the pods of Herald's Jobs."""
    return any(ref.get("kind") == "Job" and ref.get("controller")
               for ref in pod["metadata"].get("ownerReferences") or [])


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


class Executor:
    def __init__(self, kubeconfig: Path, workdir: Path, node: str = NODE) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
        self.server, self.ca = cluster["server"], cluster["certificate-authority"]
        self.workdir = workdir
        self.node = node
        self.alive = workdir / "executor.alive"  # touched by every pass: the health check
        self.running: dict[str, Running] = {}  # pod uid → its process
        self.done: set[str] = set()  # uids whose final status was written
        self.retry_at: dict[str, float] = {}  # uid → when to try a failed start again
        self.removed: set[str] = set()  # uids whose deletion was confirmed
        self.heartbeat = 0.0

    # -- the Node -------------------------------------------------------------------------

    def register(self) -> None:
        cpus, memory = str(os.cpu_count() or 1), f"{_memory_kib()}Ki"
        body = client.V1Node(metadata=client.V1ObjectMeta(name=self.node, labels={
            "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "herald.dev/local-executor": "true"}))
        try:
            self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
        capacity = {"cpu": cpus, "memory": memory, "pods": "110"}
        self.core.patch_node_status(self.node, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "osImage": "herald local executor", "kernelVersion": os.uname().release,
                         "containerRuntimeVersion": "local-process://1", "kubeletVersion": "",
                         "kubeProxyVersion": "", "bootID": "", "machineID": "",
                         "systemUUID": ""}}})
        self.beat(ready=True)

    def beat(self, ready: bool) -> None:
        now = _now()
        self.core.patch_node_status(self.node, {"status": {"conditions": [{
            "type": "Ready", "status": "True" if ready else "False",
            "reason": "LocalExecutorReady" if ready else "LocalExecutorStopped",
            "message": "the local executor runs this node's pods as processes" if ready
            else "the local executor has stopped",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
        self.heartbeat = time.monotonic()

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: list[bool]) -> None:
        self.register()
        log.info("node %s ready; running pods labelled %s", self.node, SELECTOR)
        while not stop[0]:
            try:
                self.step()
                if time.monotonic() - self.heartbeat > HEARTBEAT_SECONDS:
                    self.beat(ready=True)
            except Exception:  # an API hiccup must not stop the node
                log.exception("step failed; trying again")
            time.sleep(POLL_SECONDS)
        self.shut_down()

    def shut_down(self) -> None:
        """SIGTERM every pod at once, SIGKILL what is left after the grace, report them
        Failed, as a kubelet's graceful node shutdown does: they did not run to the end."""
        for item in self.running.values():
            item.reason = "NodeShutdown"
            self.stop_process(item, grace=SHUTDOWN_GRACE_SECONDS)
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        while time.monotonic() < deadline and any(
                item.proc.poll() is None for item in self.running.values()):
            time.sleep(0.1)
        for uid, item in list(self.running.items()):
            with contextlib.suppress(Exception):
                self.finish(uid, item)
        with contextlib.suppress(ApiException, OSError):
            self.beat(ready=False)

    def step(self) -> None:
        try:
            pods = self.api.sanitize_for_serialization(
                self.core.list_pod_for_all_namespaces(label_selector=SELECTOR).items)
        except Exception:
            # Deadlines and SIGKILLs are the node's own to keep, API or not.
            log.exception("listing pods failed; tending the running ones")
            pods = None
        seen = {pod["metadata"]["uid"] for pod in pods or []}
        for pod in pods or []:
            try:
                self.look_at(pod)
            except Exception:  # one odd pod must not hold up the others
                log.exception("pod %s/%s", pod["metadata"]["namespace"], pod["metadata"]["name"])
        for uid, item in list(self.running.items()):
            try:
                self.tend(uid, item, gone=pods is not None and uid not in seen)
            except Exception:
                log.exception("pod %s/%s", item.namespace, item.name)
        if pods is not None:
            self.done &= seen
            self.removed &= seen
            self.retry_at = {uid: t for uid, t in self.retry_at.items() if uid in seen}
            self.alive.touch()

    def look_at(self, pod: dict[str, Any]) -> None:
        """Bind it, start it, or stop it, as its state asks."""
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        phase = (pod.get("status") or {}).get("phase")
        if not spec.get("nodeName"):
            if not meta.get("deletionTimestamp") and is_job_pod(pod):
                self.bind(pod)
            return
        if spec["nodeName"] != self.node:
            return
        if meta.get("deletionTimestamp"):
            if uid in self.running:
                item = self.running[uid]
                if item.killing_at is None:
                    self.stop_process(item, grace=meta.get("deletionGracePeriodSeconds", 30))
            elif uid not in self.removed:  # a Job's finalizer may hold it a while yet
                self.remove(pod)  # a kubelet confirms the deletion once nothing runs
                self.removed.add(uid)
            return
        if uid in self.running or uid in self.done or phase in ("Succeeded", "Failed"):
            return
        if time.monotonic() < self.retry_at.get(uid, 0):
            return
        if phase == "Running":  # ours, but its process died with an earlier executor
            self.set_status(pod, "Failed", None, exit_code=137, reason="ExecutorRestarted")
            self.done.add(uid)
            return
        self.start(pod)

    def tend(self, uid: str, item: Running, gone: bool) -> None:
        """Deadlines, SIGKILL after a grace, and the end of a process."""
        if gone and item.killing_at is None:  # force-deleted: nobody waits for it
            self.stop_process(item, grace=0)
        if item.deadline and time.monotonic() > item.deadline and item.killing_at is None:
            item.reason = "DeadlineExceeded"
            self.stop_process(item, grace=_grace(self.read(item)))
        if item.killing_at and time.monotonic() > item.killing_at:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(item.proc.pid, signal.SIGKILL)
        if item.proc.poll() is not None:
            self.finish(uid, item)

    # -- one pod --------------------------------------------------------------------------

    def bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = client.V1Binding(metadata=client.V1ObjectMeta(name=meta["name"], uid=meta["uid"]),
                                target=client.V1ObjectReference(kind="Node", name=self.node))
        try:  # the generated client cannot read the reply: take it raw
            self.core.create_namespaced_pod_binding(meta["name"], meta["namespace"], body,
                                                    _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):
                raise

    def start(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        [container] = spec["containers"][:1]
        folder = self.workdir / "pods" / meta["namespace"] / meta["name"]
        folder.mkdir(parents=True, exist_ok=True)
        try:
            if len(spec["containers"]) > 1 or spec.get("initContainers"):
                raise ConfigError("the local executor runs pods of one container and no "
                                  "init containers")
            kubeconfig = self.pod_kubeconfig(pod, folder)
            env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(folder),
                   "HOSTNAME": meta["name"], "LANG": "C.UTF-8", "KUBECONFIG": str(kubeconfig),
                   "PYTHONUNBUFFERED": "1"}
            env.update(self.container_env(pod, container))
            argv = [expand(a, env) for a in
                    [*(container.get("command") or []), *(container.get("args") or [])]]
            if not container.get("command"):
                raise ConfigError("the local executor runs only containers with a command "
                                  "(it does not read images)")
            program = shutil.which(argv[0], path=env["PATH"])
            if program is None:
                raise ConfigError(f"{argv[0]!r} not found on PATH {env['PATH']}")
            with open(folder / f"{container['name']}.log", "ab") as out:
                proc = subprocess.Popen(
                    [program, *argv[1:]], env=env, cwd=folder, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent)
        except (ConfigError, OSError) as err:
            log.warning("pod %s/%s: %s", meta["namespace"], meta["name"], err)
            self.set_waiting(pod, container["name"], "CreateContainerConfigError", str(err))
            self.retry_at[meta["uid"]] = time.monotonic() + RETRY_SECONDS  # as a kubelet would
            return
        deadline = spec.get("activeDeadlineSeconds")
        item = Running(meta["namespace"], meta["name"], container["name"], proc,
                       time.monotonic(), _now(),
                       time.monotonic() + deadline if deadline else None)
        self.running[meta["uid"]] = item
        log.info("pod %s/%s started: pid %d", item.namespace, item.name, proc.pid)
        self.set_status(pod, "Running", item)

    def container_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            if not ref.get("name"):
                raise ConfigError("envFrom: an entry without configMapRef or secretRef")
            data = self.data("Secret" if "secretRef" in source else "ConfigMap", namespace,
                             ref["name"], optional=bool(ref.get("optional")))
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            name, value_from = var["name"], var.get("valueFrom")
            if value_from is None:
                env[name] = expand(var.get("value", ""), env)
            elif "fieldRef" in value_from:
                env[name] = field_value(pod, value_from["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in value_from or "configMapKeyRef" in value_from:
                kind = "Secret" if "secretKeyRef" in value_from else "ConfigMap"
                ref = value_from["secretKeyRef" if kind == "Secret" else "configMapKeyRef"]
                data = self.data(kind, namespace, ref["name"], bool(ref.get("optional")))
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    raise ConfigError(f"env {name}: {kind} {ref['name']!r} has no key "
                                      f"{ref['key']!r}")
            else:
                raise ConfigError(f"env {name}: {sorted(value_from)} is not supported by the "
                                  "local executor")
        return env

    def data(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace)
                return {k: base64.b64decode(v).decode(errors="replace")
                        for k, v in (secret.data or {}).items()}
            return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            raise ConfigError(f"{kind} {name!r}: {err.status} {err.reason}") from err

    def pod_kubeconfig(self, pod: dict[str, Any], folder: Path) -> Path:
        """A kubeconfig with a token for the pod's ServiceAccount, bound to the pod."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        # A kubelet refreshes a pod's token; the executor gives one that outlives any run
        # (a Job's deadline is at most a day). Bound to the pod, it dies with the pod.
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=TOKEN_SECONDS,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"])))
        try:
            answer = self.core.create_namespaced_service_account_token(
                account, meta["namespace"], request)
        except ApiException as err:
            raise ConfigError(f"token for ServiceAccount {account!r}: {err.status} "
                              f"{err.reason}") from err
        if answer.status is None or not answer.status.token:
            raise ConfigError(f"no token for ServiceAccount {account!r}")
        token = answer.status.token
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.server,
                                                       "certificate-authority": self.ca}}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "local", "user": account,
                                                     "namespace": meta["namespace"]}}],
            "current-context": "pod"}))
        path.chmod(0o600)
        return path

    def stop_process(self, item: Running, grace: int) -> None:
        """SIGTERM now, SIGKILL after `grace` seconds (checked by the loop)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(item.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        item.killing_at = time.monotonic() + grace
        log.info("pod %s/%s: stopping (grace %d s)", item.namespace, item.name, grace)

    def finish(self, uid: str, item: Running) -> None:
        """Report an ended (or, at shutdown, ending) process; kept for the next pass until
        its status is written."""
        with contextlib.suppress(ProcessLookupError):  # what it left behind, as a kubelet
            os.killpg(item.proc.pid, signal.SIGKILL)   # ends a container's every process
        code = item.proc.wait()
        pod = self.read(item)
        if pod is not None:  # the final phase first, as a kubelet writes it, also when deleted
            exit_code = 128 + -code if code < 0 else code
            phase = "Succeeded" if code == 0 and not item.reason else "Failed"
            self.set_status(pod, phase, item, exit_code=exit_code, reason=item.reason)
            if pod["metadata"].get("deletionTimestamp"):
                self.remove(pod)
                self.removed.add(uid)
        del self.running[uid]
        self.done.add(uid)
        log.info("pod %s/%s exited with %d", item.namespace, item.name, code)

    def read(self, item: Running) -> dict[str, Any] | None:
        try:
            return dict(self.api.sanitize_for_serialization(
                self.core.read_namespaced_pod(item.name, item.namespace)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def remove(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            # In the body: the API server ignores query parameters when there is one.
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])))
        except ApiException as err:
            if err.status != 404:
                log.warning("pod %s/%s not removed: %s %s", meta["namespace"], meta["name"],
                            err.status, err.body)

    # -- pods/status ----------------------------------------------------------------------

    def set_waiting(self, pod: dict[str, Any], container: str, reason: str,
                    message: str) -> None:
        self._patch_status(pod, {"phase": "Pending", "containerStatuses": [{
            "name": container, "ready": False, "restartCount": 0, "image": "", "imageID": "",
            "state": {"waiting": {"reason": reason, "message": message[:1024]}}}]})

    def set_status(self, pod: dict[str, Any], phase: str, item: Running | None,
                   exit_code: int = 0, reason: str = "") -> None:
        container = pod["spec"]["containers"][0]
        started = item.started_at if item else _now()
        running = phase == "Running"
        if running:
            state: dict[str, Any] = {"running": {"startedAt": started}}
        else:
            state = {"terminated": {
                "exitCode": exit_code, "startedAt": started, "finishedAt": _now(),
                "reason": reason or ("Completed" if exit_code == 0 else "Error")}}
        now = _now()
        status: dict[str, Any] = {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}], "startTime": started,
            "conditions": [{"type": t, "status": "True" if running or t in (
                "PodScheduled", "Initialized") else "False", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{
                "name": container["name"], "image": container.get("image", ""), "imageID": "",
                "ready": running, "started": running, "restartCount": 0, "state": state}],
        }
        if reason == "DeadlineExceeded":
            status |= {"reason": reason, "message": "Pod was active on the node longer than "
                                                    "the specified deadline"}
        elif reason == "NodeShutdown":
            status |= {"reason": "Terminated", "message": "the local executor stopped (herald "
                                                          "dev down) while the pod ran"}
        self._patch_status(pod, status)

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"],
                                                  {"status": status})
        except ApiException as err:
            if err.status != 404:
                raise


def _grace(pod: dict[str, Any] | None) -> int:
    return int(((pod or {}).get("spec") or {}).get("terminationGracePeriodSeconds", 30))


def _memory_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 1 << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald_dev.executor",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--node", default=NODE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = [False]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.__setitem__(0, True))
    Executor(args.kubeconfig, args.workdir, args.node).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
