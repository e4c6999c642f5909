"""Regenerate the trimmed KubeRay CRDs in this directory from the upstream ones.

    python tests/kuberay_schemas/trim.py KUBERAY_CHECKOUT/ray-operator/config/crd/bases  # then update README.md

Upstream (ray.io_rayclusters.yaml + ray.io_rayjobs.yaml) is about 2.3 MB, nearly all of it the openAPIV3Schema of
the deprecated v1alpha1 versions next to the v1 ones. The copy here keeps what tests/test_deploy.py reads:
the group, every version's name / served / storage / deprecated flags, and the v1 openAPIV3Schema unchanged;
it drops the schemas of the other versions, the printer columns and the subresources. It is written with
flow-style leaves (`{type: string}`) to stay small; yaml.safe_load gives back the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

FILES = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml")
KEEP_SCHEMA_OF = {"v1"}  # the apiVersion deploy/ uses (ray.io/v1)
VERSION_KEYS = ("name", "served", "storage", "deprecated", "deprecationWarning", "schema")


def trim(crd: dict) -> dict:
    versions = []
    for version in crd["spec"]["versions"]:
        kept = {k: version[k] for k in VERSION_KEYS if k in version}
        if version["name"] not in KEEP_SCHEMA_OF:
            kept.pop("schema", None)
        versions.append(kept)
    spec = {k: crd["spec"][k] for k in ("group", "names", "scope")} | {"versions": versions}
    return {"apiVersion": crd["apiVersion"], "kind": crd["kind"], "metadata": {"name": crd["metadata"]["name"]},
            "spec": spec}


def main(source: Path, target: Path) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    header = ("# KubeRay CRD trimmed for tests/test_deploy.py by tests/kuberay_schemas/trim.py from the upstream file of\n"
              "# the same name; source and version: tests/kuberay_schemas/README.md. Regenerate, do not edit.\n")
    for name in FILES:
        crd = yaml.load((source / name).read_text(), Loader=loader)
        trimmed = trim(crd)
        text = header + yaml.dump(trimmed, Dumper=dumper, sort_keys=False, width=120, default_flow_style=None)
        assert yaml.load(text, Loader=loader) == trimmed
        (target / name).write_text(text)
        print(f"{name}: {len((source / name).read_bytes())} -> {len(text.encode())} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent)
