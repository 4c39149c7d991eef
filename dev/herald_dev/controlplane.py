"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Everything it needs (certificates, the service-account key pair, an admin kubeconfig,
data and logs) lives in one work folder. There is no kubelet: pods stay unscheduled
unless something outside plays the node's part.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from herald_dev import build
from herald_dev.services import Service, free_port, http_ok

SERVICE_CIDR = "10.0.0.0/24"
# The controllers Herald relies on, and not the node lifecycle one: no kubelet sends
# heartbeats here, so it would mark every node unreachable and evict its pods.
CONTROLLERS = (
    "cronjob-controller",
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "ttl-after-finished-controller",
)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = x509.oid.ExtendedKeyUsageOID
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([usage.CLIENT_AUTH if client else usage.SERVER_AUTH]),
            critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def loopback_certificate(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.crt, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-ca")]), ca_key,
               None, ca=True)
    key = _key()
    cert = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, (ca, ca_key),
                 sans=[x509.DNSName("localhost"),
                       x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))])
    paths = (folder / f"{name}-ca.crt", folder / f"{name}.crt", folder / f"{name}.key")
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(cert))
    _write_key(key, paths[2])
    return paths


class ControlPlane:
    """The three control-plane services in a work folder, on ports chosen once and kept."""

    def __init__(self, workdir: Path, bin_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir or build.bin_dir()
        self.pki = workdir / "pki"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.ports = self._ports()
        self.services = [self._etcd(), self._apiserver(), self._controller_manager()]

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def _ports(self) -> dict[str, int]:
        path = self.workdir / "ports.json"
        if path.exists():
            ports: dict[str, int] = json.loads(path.read_text())
            return ports
        self.workdir.mkdir(parents=True, exist_ok=True)
        names = ("etcd", "etcd_peer", "apiserver", "controller_manager")
        ports = {name: free_port() for name in names}
        path.write_text(json.dumps(ports))
        return ports

    def prepare(self) -> None:
        """Certificates, keys and the admin kubeconfig, made once per work folder."""
        if (self.pki / "ca.crt").exists() and self.kubeconfig.exists():
            return
        self.pki.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "herald-local-ca")]),
                   ca_key, None, ca=True)
        server_key = _key()
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.IPv4Network(SERVICE_CIDR)[1]),  # the kubernetes Service
        ]
        server = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                       server_key, (ca, ca_key), sans=sans)
        admin_key = _key()
        admin = _cert(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "herald-admin"),
        ]), admin_key, (ca, ca_key), client=True)
        sa_key = _key()
        for name, key in (("ca", ca_key), ("apiserver", server_key), ("admin", admin_key),
                          ("sa", sa_key)):
            _write_key(key, self.pki / f"{name}.key")
        for name, cert in (("ca", ca), ("apiserver", server), ("admin", admin)):
            (self.pki / f"{name}.crt").write_bytes(_pem(cert))
        (self.pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self._write_kubeconfig(self.kubeconfig, "herald-admin", {
            "client-certificate": str(self.pki / "admin.crt"),
            "client-key": str(self.pki / "admin.key")})

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict[str, str],
                          namespace: str | None = None) -> None:
        context: dict[str, str] = {"cluster": "herald-local", "user": user}
        if namespace:
            context["namespace"] = namespace
        path.write_text(json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "herald-local", "cluster": {
                "server": self.server,
                "certificate-authority": str(self.pki / "ca.crt")}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": context}],
            "current-context": user,
        }, indent=2))
        path.chmod(0o600)

    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _etcd(self) -> Service:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        return Service(
            name="etcd",
            argv=[
                str(self.bin_dir / "etcd"),
                "--name=herald",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=herald={peer}",
                "--unsafe-no-fsync",  # a throwaway local cluster: speed over crash safety
                "--log-level=warn",
            ],
            workdir=self.workdir,
            ready=lambda: http_ok(f"{client}/health"),
        )

    def _apiserver(self) -> Service:
        pki = self.pki
        return Service(
            name="kube-apiserver",
            argv=[
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--v=1",
            ],
            workdir=self.workdir,
            ready=lambda: http_ok(f"{self.server}/readyz", self._admin_ssl()),
        )

    def _controller_manager(self) -> Service:
        port = self.ports["controller_manager"]
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its serving cert is self-signed; /healthz only
        return Service(
            name="kube-controller-manager",
            argv=[
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--authentication-skip-lookup",  # no front-proxy CA here; skip looking for one
                "--leader-elect=false",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--v=1",
            ],
            workdir=self.workdir,
            ready=lambda: http_ok(f"https://127.0.0.1:{port}/healthz", insecure),
        )

    def kubectl(self, *args: str, input_: str | None = None, timeout: float = 60) -> str:
        """Run the built kubectl as the admin; return its output."""
        done = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def install(self, *manifests: Path) -> None:
        """Apply manifests (server-side) and wait until their CRDs serve."""
        files = [arg for m in manifests for arg in ("-f", str(m))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *files)
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path,
                                   seconds: int = 7 * 24 * 3600) -> Path:
        """A kubeconfig that acts as a ServiceAccount, from a TokenRequest, at `path`."""
        token = self.kubectl("create", "token", name, "-n", namespace,
                             f"--duration={seconds}s").strip()
        self._write_kubeconfig(path, name, {"token": token}, namespace)
        return path
