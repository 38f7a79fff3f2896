"""The runtime install's floor: stock `tar` extracting the prebuilt runtime tree vs venv + pip.

    .venv/bin/python benchmarks/runtime_tree_bench.py [--site SITE.yaml] [--workdir /tmp] [--keep]

Issue 31's floor for a first deploy is stock `tar` extracting the runtime tree on each host. This
measures, on this machine and in one run, the two ways the runtime role installs
/opt/aifactory/<version> from the same runtime wheel set of the site (the lab's by default; the
wheels come from the bundle cache, ~/.cache/aifactory, filled by any bundle build):

- pip (bundles without a tree): `python3 -m venv` then `pip install --no-index --no-compile` from
  the wheelhouse, as playbooks/roles/runtime/tasks/install.yml runs them;
- tree: `tar --zstd -x` of the tree built by `bundle build --runtime-tree`, then `sha256sum --check`
  of every file against its listing, as tasks/tree.yml runs them (the tree is built first, untimed).

Prints seconds of each and the ratio pip/tree (how many times faster the tree installs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aifactory.bundle import runtime_tree, wheelhouse
from aifactory.bundle.build import RUNTIME_REQUIREMENTS, site_wheelsets
from aifactory.plan import plan_site

REPO = Path(__file__).resolve().parents[1]
STAMP = 1_763_800_000


def timed(argv: list[str], **kwargs: object) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default=str(REPO / "inventory/lab/site.yaml"), help="site spec")
    parser.add_argument("--workdir", default="/tmp", help="scratch folder (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="runtime-tree-bench-", dir=args.workdir))
    try:
        planned = plan_site(Path(args.site), write_lock=False)
        own = wheelhouse.build_own_wheel(REPO, work / "own", timestamp=STAMP)
        pins = wheelhouse.default_pins()
        wheelset = next(s for s in site_wheelsets(planned, own, pins) if s.name == "runtime")
        wheels = [*wheelhouse.download(wheelset, cache=wheelhouse.cache_root() / "wheels"), own]
        interpreter = runtime_tree.probe_interpreter(runtime_tree.DEFAULT_PYTHON)
        tree_target = work / "tree-root" / "1.0"
        tree = runtime_tree.build_tree(
            interpreter=interpreter,
            platform=wheelset.platform,
            wheels=wheels,
            requirements=RUNTIME_REQUIREMENTS,
            target=str(tree_target),
            work=work / "build",
            timestamp=STAMP,
        )
        tree_target.mkdir(parents=True)
        extract = timed(
            ["tar", "--zstd", "--extract", "--file", str(tree.archive), "--directory", str(tree_target)]
        )
        check = timed(["sha256sum", "--check", "--strict", "--quiet", str(tree.listing)], cwd=tree_target)
        wheelhouse_dir = runtime_tree.link_wheels(wheels, work / "wheelhouse")
        pip_target = work / "pip-root" / "1.0"
        size = tree.archive.stat().st_size
        venv = timed([str(interpreter.path), "-m", "venv", str(pip_target)])
        pip = timed(
            [
                str(pip_target / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--isolated",
                "--no-index",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--find-links",
                str(wheelhouse_dir),
                "--no-compile",
                *RUNTIME_REQUIREMENTS,
            ],
            env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    tree_seconds, pip_seconds = extract + check, venv + pip
    print(
        f"runtime tree {wheelset.platform.tag}: {len(tree.packages)} packages, {size / 1e6:.0f} MB compressed"
    )
    print(f"  pip:  venv {venv:.1f} s + pip install {pip:.1f} s = {pip_seconds:.1f} s")
    print(f"  tree: tar -x {extract:.1f} s + sha256sum --check {check:.1f} s = {tree_seconds:.1f} s")
    print(f"  ratio pip/tree: {pip_seconds / tree_seconds:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
