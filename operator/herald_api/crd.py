"""The CRDs, generated from the models: `python -m herald_api.crd manifests/crds`.

A unit test fails when the files in manifests/crds differ from what this generates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from herald_api import GROUP, VERSION
from herald_api.models import HALT_NAME, CampaignSpec, CampaignStatus, HaltSpec, cel

# Pydantic's JSON-schema words that a Kubernetes structural schema has no use for.
_DROPPED = {"title", "additionalProperties"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's JSON schema into a Kubernetes structural schema."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[1]]
        return structural({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, defs)
    if "anyOf" in schema:  # Optional[X]: X, with no null default
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        assert len(options) == 1, schema
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or key == "$defs" or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if isinstance(schema.get("additionalProperties"), dict):  # a map
        out["additionalProperties"] = structural(schema["additionalProperties"], defs)
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return structural(schema, schema.get("$defs", {}))


def _crd(
    kind: str, plural: str, scope: str, short: list[str], spec: type[BaseModel],
    status: dict[str, Any], columns: list[dict[str, Any]], spec_required: bool,
    root_rules: dict[str, Any] | None = None,
) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "properties": {"spec": _schema_of(spec), "status": status},
        **(root_rules or {}),
    }
    if spec_required:
        root["required"] = ["spec"]
    else:
        root["properties"]["spec"]["default"] = {}
    names: dict[str, Any] = {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                             "singular": kind.lower(), "categories": ["herald"]}
    if short:
        names["shortNames"] = short
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": names,
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def _column(name: str, type_: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, **extra}


def campaign_crd() -> dict[str, Any]:
    return _crd(
        "NotificationCampaign", "notificationcampaigns", "Namespaced", ["nc", "ncamp"],
        CampaignSpec, _schema_of(CampaignStatus),
        [
            _column("Suspended", "boolean", ".spec.suspend"),
            _column("Phase", "string", ".status.phase"),
            _column("Sent", "integer", ".status.sent"),
            _column("Total", "integer", ".status.total"),
            _column("Next Window", "string", ".status.nextWindowStart"),
            _column("Age", "date", ".metadata.creationTimestamp"),
        ],
        spec_required=True,
    )


def halt_crd() -> dict[str, Any]:
    status = {"type": "object", "properties": {
        "observedGeneration": {"type": "integer"},
        "haltedCampaigns": {"type": "integer",
                            "description": "Campaigns the operator has halted."},
    }}
    return _crd(
        "DeliveryHalt", "deliveryhalts", "Cluster", [], HaltSpec, status,
        [
            _column("Halted", "boolean", ".spec.halted"),
            _column("Reason", "string", ".spec.reason"),
            _column("Age", "date", ".metadata.creationTimestamp"),
        ],
        spec_required=False,
        # One object, so that "halted" has one meaning; any other name would be ignored.
        root_rules=cel((f"self.metadata.name == '{HALT_NAME}'",
                        f"the DeliveryHalt must be named '{HALT_NAME}'", None)),
    )


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # plain YAML: no &anchors for repeated lists


def render(doc: dict[str, Any]) -> str:
    header = "# Generated from operator/herald_api/models.py by `python -m herald_api.crd`.\n"
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return header + body


FILES = {
    "notificationcampaigns.yaml": campaign_crd,
    "deliveryhalts.yaml": halt_crd,
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m herald_api.crd",
                                     description="Write the CRDs generated from the models.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("manifests/crds"))
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    for name, make in FILES.items():
        (out / name).write_text(render(make()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
