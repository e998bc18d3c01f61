"""What `pip install runstream` costs a training image, and each extra: installed size of a fresh venv's site-packages.

    python bench/install_size.py                      # bare SDK, [server], [dashboards], [server,dashboards]
    python bench/install_size.py --extras "" server   # only these

Builds the wheel of this checkout, installs it into one new virtual environment per extra (without pip or
setuptools in it, and without this environment's packages), with the versions this environment has
(pip's cache then serves the wheels), and prints a Markdown table: megabytes on disk, distributions, and
the largest ones. The README's "Installing" table comes from this output (bench/results/install_size.txt).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_EXTRAS = ("", "server", "dashboards", "server,dashboards")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                   check=True, timeout=600)
    [wheel] = out.glob("runstream-*.whl")
    return wheel


def install(wheel: Path, extras: str, venv: Path, constraints: Path) -> Path:
    """A fresh venv holding the wheel with `extras`; returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    target = f"runstream[{extras}] @ {wheel.as_uri()}" if extras else str(wheel)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--constraint", str(constraints), target], check=True, timeout=1800)
    [site] = (venv / "lib").glob("python3*/site-packages")
    return site


def distribution_sizes(site: Path) -> dict[str, int]:
    """Bytes per installed distribution, from each one's RECORD."""
    sizes: dict[str, int] = {}
    for dist in metadata.distributions(path=[str(site)]):
        total = 0
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                total += path.stat().st_size
        sizes[dist.metadata["Name"]] = total
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", nargs="*", default=list(DEFAULT_EXTRAS),
                        help='extras to measure, comma-separated within one ("" is the bare SDK)')
    args = parser.parse_args()
    mb = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="runstream-size-") as tmp:
        root = Path(tmp)
        wheel = build_wheel(root / "dist")
        constraints = root / "constraints.txt"
        constraints.write_text("".join(f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
                                       if d.metadata["Name"] and _normal(d.metadata["Name"]) != "runstream"))
        print(f"Installed size of a fresh venv's site-packages, Python {sys.version.split()[0]}, {sys.platform}")
        print("(`python bench/install_size.py`; the same package versions as the dev environment)\n")
        print("| install | site-packages | distributions | largest |")
        print("|---|---:|---:|---|")
        for index, extras in enumerate(args.extras):
            site = install(wheel, extras, root / f"venv{index}", constraints)
            sizes = distribution_sizes(site)
            largest = ", ".join(f"{name} {size / mb:.0f}" for name, size in
                                sorted(sizes.items(), key=lambda item: -item[1])[:4])
            name = f"`pip install 'runstream[{extras}]'`" if extras else "`pip install runstream`"
            print(f"| {name} | {_tree_bytes(site) / mb:,.0f} MB | {len(sizes)} | {largest} (MB) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
