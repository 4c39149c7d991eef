"""The control-plane build recipe: pinned versions, version stamps, wrapper modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald_dev import build


def test_binaries_are_cached_by_version_outside_the_checkout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HERALD_CACHE", str(tmp_path))
    folder = build.bin_dir()
    assert folder.parent == tmp_path / "bin"
    for version in (build.KUBERNETES_VERSION, build.ETCD_VERSION, build.HELM_VERSION):
        assert version in folder.name
    assert not build.is_built()


def test_kubernetes_binaries_report_the_pinned_version() -> None:
    flags = build._version_ldflags()
    major, minor = build.KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion={build.KUBERNETES_VERSION}" in flags
        assert f"-X {pkg}.gitMajor={major}" in flags
        assert f"-X {pkg}.gitMinor={minor}" in flags


def test_wrapper_module_replaces_staging_modules_with_published_versions(
    tmp_path: Path,
) -> None:
    mod = build._wrapper(tmp_path, "kubernetes", {"k8s.io/kubernetes": "v1.36.3"},
                         {"k8s.io/api": "v0.36.3"})
    gomod = (mod / "go.mod").read_text().splitlines()
    assert "require k8s.io/kubernetes v1.36.3" in gomod
    assert "replace k8s.io/api => k8s.io/api v0.36.3" in gomod
