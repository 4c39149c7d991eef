"""Build the local control plane's binaries from the Go module proxy, once per version.

etcd, kube-apiserver, kube-controller-manager, kubectl and helm are built with `go build`
in small wrapper modules of our own (Kubernetes replaces its staging modules with local
folders, so it cannot be built with `go install`; etcd has relative replaces too). The
binaries, the Go module cache and the Go build cache live under HERALD_CACHE
(default ~/.cache/herald), outside the checkout, keyed by version: only the first run pays.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.17"
HELM_VERSION = "v4.3.2"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")


def cache_root() -> Path:
    return Path(os.environ.get("HERALD_CACHE", Path.home() / ".cache" / "herald"))


def bin_dir() -> Path:
    """Where the binaries of the pinned versions are, once built."""
    key = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_helm-{HELM_VERSION}"
    return cache_root() / "bin" / key


def binary(name: str) -> Path:
    return bin_dir() / name


def is_built() -> bool:
    return all(binary(n).is_file() for n in (*KUBE_COMMANDS, "etcd", "helm"))


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOMODCACHE"] = str(cache_root() / "go" / "mod")
    env["GOCACHE"] = str(cache_root() / "go" / "build")
    env["GOFLAGS"] = "-mod=mod"
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _go(args: list[str], cwd: Path, log) -> None:
    log.write(f"$ go {' '.join(args)}\n")
    log.flush()
    subprocess.run(["go", *args], cwd=cwd, env=_go_env(), check=True, stdout=log, stderr=log)


def _staging_modules(version: str, work: Path, log) -> list[str]:
    """The staging modules Kubernetes replaces with local folders, read from its go.mod."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=work, env=_go_env(), check=True, capture_output=True, text=True,
    ).stdout
    gomod = Path(json.loads(out)["GoMod"]).read_text()
    modules = []
    for line in gomod.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            modules.append(parts[0])
    log.write(f"staging modules: {len(modules)}\n")
    return modules


def _wrapper(work: Path, name: str, requires: dict[str, str], replaces: dict[str, str]) -> Path:
    mod = work / name
    if mod.exists():
        shutil.rmtree(mod)
    mod.mkdir(parents=True)
    lines = [f"module herald.local/build/{name}", "", "go 1.26", ""]
    lines += [f"require {m} {v}" for m, v in requires.items()]
    lines += [f"replace {m} => {m} {v}" for m, v in replaces.items()]
    (mod / "go.mod").write_text("\n".join(lines) + "\n")
    return mod


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build(log_path: Path | None = None) -> Path:
    """Build whatever of the pinned binaries is missing; return their folder."""
    out = bin_dir()
    out.mkdir(parents=True, exist_ok=True)
    if is_built():
        return out
    with open(cache_root() / "build.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # one build at a time per cache
        if is_built():
            return out
        work = cache_root() / "work"
        work.mkdir(parents=True, exist_ok=True)
        log_path = log_path or cache_root() / "build.log"
        with open(log_path, "a") as log:
            started = time.monotonic()
            tmp = out / "partial"
            tmp.mkdir(exist_ok=True)
            if not all(binary(n).is_file() for n in KUBE_COMMANDS):
                staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
                staging = _staging_modules(KUBERNETES_VERSION, work, log)
                mod = _wrapper(
                    work, "kubernetes",
                    {"k8s.io/kubernetes": KUBERNETES_VERSION},
                    {m: staging_version for m in staging},
                )
                # One invocation, so the three binaries share compiled packages.
                _go(["build", "-trimpath", "-ldflags", _version_ldflags(), "-o", str(tmp) + "/",
                     *(f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS)], mod, log)
            if not binary("etcd").is_file():
                mod = _wrapper(work, "etcd", {"go.etcd.io/etcd/server/v3": ETCD_VERSION}, {})
                _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "etcd"),
                     "go.etcd.io/etcd/server/v3"], mod, log)
            if not binary("helm").is_file():
                mod = _wrapper(work, "helm", {"helm.sh/helm/v4": HELM_VERSION}, {})
                _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp / "helm"),
                     "helm.sh/helm/v4/cmd/helm"], mod, log)
            for built in tmp.iterdir():
                built.rename(out / built.name)
            tmp.rmdir()
            log.write(f"built in {time.monotonic() - started:.0f} s\n")
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-dir", action="store_true", help="print the binaries' folder")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cached = is_built()
    try:
        out = build()
    except subprocess.CalledProcessError as err:
        log = cache_root() / "build.log"
        print(f"control-plane build failed ({err}); last lines of {log}:", file=sys.stderr)
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
        return 1
    if args.print_dir:
        print(out)
    else:
        how = "cached" if cached else "built"
        print(f"control-plane binaries {how} in {time.monotonic() - started:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
