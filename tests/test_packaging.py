"""The top-level folders install as `runstream.*`, with the .avsc files, both editable and as a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECK = (
    "import runstream, runstream.schemas as s, runstream.consumer, runstream.producer;"
    "c = s.bundled_catalogue();"
    "print(runstream.schemas.__file__);"
    "print(sorted(c.event_types))"
)
# Every schema file in the checkout must be found by the installed package.
EXPECTED = str(sorted({path.name.split(".")[0] for path in (REPO / "schemas" / "avro").glob("*.avsc")}))


def test_editable_install_maps_top_level_folders(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=tmp_path, check=True)
    schemas_file, event_types = done.stdout.splitlines()
    assert Path(schemas_file).resolve() == (REPO / "schemas" / "__init__.py").resolve()
    assert event_types == EXPECTED


@pytest.mark.slow
def test_built_wheel_imports_and_finds_the_schemas(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = (tmp_path / "dist").glob("runstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "runstream/schemas/avro/metric_steps.v1.avsc" in names
    assert "runstream/producer/run.py" in names and "runstream/consumer/service.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # Only the wheel's copy is importable as runstream: dependencies still come from this environment.
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {CHECK}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, check=True)
    schemas_file, event_types = done.stdout.splitlines()
    assert Path(schemas_file).is_relative_to(target)
    assert event_types == EXPECTED
