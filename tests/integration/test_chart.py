"""The Helm chart, with the built helm, against a control plane of its own (the chart
installs the cluster-wide halt object and RBAC, which the session's cluster already has)."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from herald_dev import build
from herald_dev.controlplane import ControlPlane
from herald_dev.services import Service, free_port, start_all, stop_all
from herald_dev.stack import operator_service
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "herald"
VALUES = ["values.yaml", "values-dev.yaml", "values-staging.yaml", "values-prod.yaml"]
RELEASE, NS = "herald", "herald-system"


def helm(*args: str, cp: ControlPlane | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    kube = [f"--kubeconfig={cp.kubeconfig}"] if cp else []
    done = subprocess.run([str(build.bin_dir() / "helm"), *args, *kube],
                          capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {done.stderr}")
    return done


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path_factory.mktemp("chart-cluster"))
    cp.prepare()
    try:
        start_all(cp.services, attached=True, timeout=120)
        yield cp
    finally:
        stop_all(cp.services)


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_passes_with_each_values_file(values: str) -> None:
    done = helm("lint", str(CHART), "-f", str(CHART / values), "--strict")
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(("setting", "complaint"), [
    ("operator.replicas=-1", "/operator/replicas"),
    ("operator.replica=1", "additional properties 'replica' not allowed"),
    ("redis.mode=memory", "'bundled', 'external'"),
    ("operator.resources.requests.cpu=-1", "/operator/resources/requests/cpu"),
    ("smtp.host=relay example", "/smtp/host"),
    ("redis.mode=external,redis.external.url=redis://r:6379/0,"
     "redis.external.existingSecret=ledger", "set url or existingSecret, not both"),
])
def test_the_schema_refuses_bad_values_saying_which(setting: str, complaint: str) -> None:
    done = helm("template", RELEASE, str(CHART), "--set", setting, check=False)
    assert done.returncode != 0
    assert complaint in done.stderr, done.stderr


def test_a_user_id_from_a_values_file_reaches_the_pods_as_an_integer(tmp_path: Path) -> None:
    # Helm reads numbers in values files as floats: 1000680000 must not become 1.00068e+09.
    values = tmp_path / "values.yaml"
    values.write_text("securityContext:\n  runAsUser: 1000680000\n")
    out = helm("template", RELEASE, str(CHART), "-n", NS, "-f", str(values)).stdout
    [deployment] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"
                    and d["metadata"]["name"] == "herald-operator"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000680000
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HERALD_JOB_USER_ID"] == "1000680000"


def test_the_service_monitor_is_rendered_only_where_its_api_is_served() -> None:
    def kinds(*extra: str) -> list[str]:
        out = helm("template", RELEASE, str(CHART), "-n", NS, "-f",
                   str(CHART / "values-prod.yaml"), *extra).stdout
        return [d["kind"] for d in yaml.safe_load_all(out) if d]

    assert "ServiceMonitor" not in kinds()
    assert kinds("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor").count(
        "ServiceMonitor") == 1


def test_each_environment_renders_what_the_api_server_accepts(cluster: ControlPlane) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for ns in (NS, "notices-staging", "marketing-staging"):
        cluster.kubectl("create", "namespace", ns)
    for values in VALUES:
        rendered = helm("template", RELEASE, str(CHART), "-n", NS,
                        "-f", str(CHART / values)).stdout
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", input_=rendered)
    # Namespaced installs get RoleBindings in each watched namespace, nothing cluster-wide
    # on namespaced objects.
    staging = list(yaml.safe_load_all(helm("template", RELEASE, str(CHART), "-n", NS, "-f",
                                           str(CHART / "values-staging.yaml")).stdout))
    bindings = {d["metadata"]["namespace"] for d in staging if d and d["kind"] == "RoleBinding"}
    assert bindings == {"notices-staging", "marketing-staging"}
    [operator_role] = [d for d in staging if d and d["kind"] == "ClusterRole"
                       and d["metadata"]["name"] == "herald-operator"]
    assert not any("cronjobs" in r["resources"] for r in operator_role["rules"])
    [operator] = [d for d in staging if d and d["kind"] == "Deployment"]
    [spread] = operator["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname", "replicas on different nodes"


def herald_objects(cp: ControlPlane) -> list[str]:
    """Every object of the release (by its instance label), cluster-wide, but the CRDs."""
    kinds = ("deployments,statefulsets,services,secrets,serviceaccounts,clusterroles,"
             "clusterrolebindings,rolebindings,deliveryhalts,clusterkopfpeerings,"
             "validatingadmissionpolicies,validatingadmissionpolicybindings")
    out = cp.kubectl("get", kinds, "-A", "-l", f"app.kubernetes.io/instance={RELEASE}",
                     "-o", "name")
    return out.split()


def deployment(cp: ControlPlane) -> dict[str, Any]:
    return dict(json.loads(cp.kubectl("get", "deployment", "herald-operator", "-n", NS,
                                      "-o", "json")))


def operator_env(cp: ControlPlane) -> dict[str, str]:
    """The operator container's environment as the chart sets it, Secrets resolved."""
    env = {}
    for var in deployment(cp)["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" not in var:
            env[var["name"]] = var.get("value", "")
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            secret = json.loads(cp.kubectl("get", "secret", ref["name"], "-n", NS, "-o", "json"))
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def can_i(cp: ControlPlane, namespace: str, account: str, *what: str) -> bool:
    done = subprocess.run(
        [str(cp.bin_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}", "auth", "can-i", *what,
         "-n", namespace, f"--as=system:serviceaccount:{namespace}:{account}"],
        capture_output=True, text=True, timeout=30)
    return done.stdout.strip() == "yes"


def test_install_upgrade_operate_and_uninstall(cluster: ControlPlane, tmp_path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    helm("install", RELEASE, str(CHART), "-n", NS, "--create-namespace",
         "-f", str(CHART / "values-dev.yaml"), cp=cluster)
    installed = herald_objects(cluster)
    for expected in ("deployment.apps/herald-operator", "statefulset.apps/herald-redis",
                     "clusterrole.rbac.authorization.k8s.io/herald-job-halt-reader",
                     "clusterrolebinding.rbac.authorization.k8s.io/herald-job-halt-reader",
                     "clusterrole.rbac.authorization.k8s.io/herald-halt-admin",
                     "deliveryhalt.herald.dev/cluster", "clusterkopfpeering.kopf.dev/herald"):
        assert expected in installed
    password = operator_env(cluster)["HERALD_JOB_REDIS_URL"]
    halt = ["patch", "deliveryhalt", "cluster", "--type", "merge", "-p"]
    cluster.kubectl(*halt, '{"spec":{"halted":true,"reason":"INC-7"}}')

    helm("upgrade", RELEASE, str(CHART), "-n", NS, "-f", str(CHART / "values-dev.yaml"),
         "--set", "operator.replicas=2", "--set", "operator.resyncSeconds=3",
         "--set", "imagePullSecrets[0].name=registry-pull",
         "--set", "securityContext.runAsUser=20002", cp=cluster)
    after = deployment(cluster)
    assert after["spec"]["replicas"] == 2
    assert "--resync-seconds=3" in after["spec"]["template"]["spec"]["containers"][0]["args"]
    assert operator_env(cluster)["HERALD_JOB_REDIS_URL"] == password, "the password is kept"
    spec = json.loads(cluster.kubectl("get", "deliveryhalt", "cluster", "-o", "json"))["spec"]
    assert spec == {"halted": True, "reason": "INC-7"}, "an upgrade never lifts a halt"
    cluster.kubectl(*halt, '{"spec":{"halted":false}}')

    # The operator, run here as installed (the chart's ServiceAccount, so its RBAC, and the
    # Deployment's arguments and environment), reconciles a campaign that relies on the
    # chart's default SMTP relay.
    cluster.kubectl("create", "namespace", "notices")
    with operator_as_installed(cluster, tmp_path):
        for name in ("notice", "other"):
            apply_campaign(cluster, "notices", name)
        wait_for(lambda: phase(cluster, "notices", "notice") == "Scheduled", timeout=60)
        job_pods_get_what_they_need_and_no_more(cluster)

    helm("uninstall", RELEASE, "-n", NS, cp=cluster)
    wait_for(lambda: not herald_objects(cluster), timeout=60)
    crds = cluster.kubectl("get", "crd", "-o", "name")
    assert "notificationcampaigns.herald.dev" in crds and "deliveryhalts.herald.dev" in crds


def test_a_namespaced_install_serves_only_its_namespaces(
    cluster: ControlPlane, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    for ns in ("team-a", "team-b"):
        cluster.kubectl("create", "namespace", ns)
    helm("install", RELEASE, str(CHART), "-n", NS, "--create-namespace",
         "-f", str(CHART / "values-dev.yaml"), "--set", "watchNamespaces={team-a}", cp=cluster)
    try:
        with operator_as_installed(cluster, tmp_path):
            apply_campaign(cluster, "team-b", "elsewhere")
            apply_campaign(cluster, "team-a", "notice")
            wait_for(lambda: phase(cluster, "team-a", "notice") == "Scheduled", timeout=60)
            time.sleep(4)  # more than a resync
            assert phase(cluster, "team-b", "elsewhere") == ""
            # The halt is readable by the watched namespaces' ServiceAccounts only.
            assert can_i(cluster, "team-a", "herald-job-notice", "watch",
                         "deliveryhalts.herald.dev/cluster")
            assert not can_i(cluster, "team-b", "default", "get",
                             "deliveryhalts.herald.dev/cluster")
    finally:
        helm("uninstall", RELEASE, "-n", NS, cp=cluster)


@contextlib.contextmanager
def operator_as_installed(cp: ControlPlane, tmp_path: Path) -> Iterator[Service]:
    kubeconfig = cp.service_account_kubeconfig(NS, "herald-operator",
                                               tmp_path / "operator.kubeconfig")
    env = operator_env(cp)
    args = deployment(cp)["spec"]["template"]["spec"]["containers"][0]["args"]
    operator = operator_service(tmp_path / "operator", kubeconfig, free_port(), free_port(),
                                env["HERALD_JOB_REDIS_URL"])
    operator.env.update(env)
    operator.argv = [*operator.argv, *(a for a in args if a.startswith(
        ("--peering", "--resync-seconds", "--namespace")))]
    try:
        start_all([operator], attached=True, timeout=60)
        yield operator
    except BaseException:
        print(operator.log_tail(40))
        raise
    finally:
        operator.stop()


def apply_campaign(cp: ControlPlane, namespace: str, name: str) -> None:
    cp.kubectl("apply", "-n", namespace, "-f", "-", input_=json.dumps({
        "apiVersion": "herald.dev/v1alpha1", "kind": "NotificationCampaign",
        "metadata": {"name": name},
        "spec": {"audience": {"inline": [{"email": "user1@example.com"}]},
                 "message": {"from": "n@example.com", "subject": "S", "text": "T"}}}))


def phase(cp: ControlPlane, namespace: str, name: str) -> str:
    found = json.loads(cp.kubectl("get", "nc", name, "-n", namespace, "-o", "json"))
    return str(found.get("status", {}).get("phase", ""))


def job_pods_get_what_they_need_and_no_more(cp: ControlPlane) -> None:
    cronjob = json.loads(cp.kubectl("get", "cronjob", "notice-w0", "-n", "notices", "-o",
                                    "json"))
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HERALD_DEFAULT_SMTP_HOST"] == "mailpit.herald-demo.svc"
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}], "pods pull as the operator"
    assert pod["securityContext"]["runAsUser"] == 20002, "and run as its user"
    sa = "herald-job-notice"
    assert can_i(cp, "notices", sa, "get", "notificationcampaigns.herald.dev/notice")
    assert not can_i(cp, "notices", sa, "get", "notificationcampaigns.herald.dev/other")
    assert not can_i(cp, "notices", sa, "patch", "notificationcampaigns.herald.dev/notice")
    # Its Redis URL reaches it through the node (secretKeyRef), not through the API.
    assert not can_i(cp, "notices", sa, "get", "secret/herald-job-notice")
    assert not can_i(cp, "notices", sa, "get", "secret/herald-job-other")
    assert not can_i(cp, "notices", sa, "list", "secrets")
    assert can_i(cp, "notices", sa, "watch", "deliveryhalts.herald.dev/cluster")
    assert not can_i(cp, "notices", sa, "patch", "deliveryhalts.herald.dev/cluster")
