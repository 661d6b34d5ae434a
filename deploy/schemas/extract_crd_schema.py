"""Turn a CustomResourceDefinition into the JSON schema committed here (see README.md).

    python deploy/schemas/extract_crd_schema.py CRD.yaml VERSION > deploy/schemas/<kind>.json

Takes the openAPIV3Schema of the named version, drops the prose (`description`) to keep the file
small, and closes every object that lists its `properties` and neither declares
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields`: an unknown field there is an
error, as it is for `kubectl apply`, whose default (`--validate=strict`) asks the API server to
reject unknown fields instead of pruning them silently. Nothing else is changed.
"""

from __future__ import annotations

import json
import sys

import yaml


def close(node):
    if isinstance(node, dict):
        node.pop("description", None)
        for value in node.values():
            close(value)
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for value in node:
            close(value)
    return node


def main(path: str, version: str) -> None:
    crd = yaml.safe_load(open(path))
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = close(ver["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema.setdefault("required", [])
    for key in ("apiVersion", "kind", "metadata"):
        if key not in schema["required"]:
            schema["required"].append(key)
    # metadata is the API server's ObjectMeta: the fields a manifest sets are checked by name
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    json.dump(schema, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
