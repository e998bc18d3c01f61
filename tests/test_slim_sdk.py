"""`pip install runstream` is the SDK only: the bare wheel in a fresh venv logs runs, and nothing heavy comes.

The wheel is built from this checkout and installed, without extras, into a new virtual environment that
does not see this one's packages (no --system-site-packages). There, a run is logged offline and read
back from the spool, `runstream run` wraps a command, `runstream sync` uploads the spool to the real
broker (the dev environment's consumer then stores it, counted), and every command or import that needs
an extra says which one, in one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from spool_reader import read_spool, spooled

from runstream.extras import MissingExtraError, command_error, missing_extra, requires_extra

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("chdb", "pyarrow", "pandas", "clickhouse_connect", "prometheus_client", "grafanalib", "matplotlib")
EXTRA_LINE = re.compile(r"^runstream (\S+): needs the server extra: pip install 'runstream\[server\]' "
                        r"\(missing module (chdb|pyarrow|pandas|clickhouse_connect|prometheus_client)\)$")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class BareSdk:
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A process of the bare venv, with none of this environment's RUNSTREAM_* settings or paths."""
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("RUNSTREAM_", "PYTHON", "VIRTUAL_ENV"))}
        clean["PATH"] = f"{self.venv / 'bin'}:{clean.get('PATH', '')}"
        return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                              env={**clean, **(env or {})}, cwd=cwd or self.venv, check=False)

    def python_code(self, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-c", textwrap.dedent(code), env=env)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_missing_module_is_traced_to_its_extra_through_rewrapped_errors() -> None:
    try:
        try:
            raise ModuleNotFoundError("No module named 'grafanalib'", name="grafanalib")
        except ImportError as inner:
            raise ImportError("building dashboards needs grafanalib") from inner  # as dashboards/build.py does
    except ImportError as error:
        wrapped = error
    assert missing_extra(wrapped) == ("dashboards", "grafanalib")
    assert command_error("dashboards", wrapped) == (
        "runstream dashboards: needs the dashboards extra: pip install 'runstream[dashboards]' "
        "(missing module grafanalib)")
    assert missing_extra(ModuleNotFoundError("x", name="pyarrow.compute")) == ("server", "pyarrow")
    # Our own module or one no extra installs is a bug, not a missing extra: the CLI lets it through.
    assert missing_extra(ModuleNotFoundError("x", name="runstream.nope")) is None
    assert missing_extra(ImportError("cannot import name 'x' from 'pyarrow'", name="pyarrow")) is None  # there
    with pytest.raises(MissingExtraError, match=r"^runstream.Client needs the server extra: pip install "
                       r"'runstream\[server\]' \(missing module pandas\)$") as raised:
        with requires_extra("runstream.Client"):
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
    assert isinstance(raised.value, ImportError) and raised.value.extra == "server"
    with pytest.raises(ModuleNotFoundError, match="nope"), requires_extra("runstream.Client"):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")


@pytest.fixture(scope="module")
def bare_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BareSdk]:
    root = tmp_path_factory.mktemp("slim")
    _ok(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)],
                       capture_output=True, text=True, timeout=300, check=False))
    [wheel] = (root / "dist").glob("runstream-*.whl")
    venv = root / "venv"
    _ok(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                       capture_output=True, text=True, timeout=120, check=False))
    # The same versions as this environment's, so pip takes them from its cache instead of resolving anew.
    constraints = root / "constraints.txt"
    constraints.write_text("".join(f"{dist.metadata['Name']}=={dist.version}\n" for dist in metadata.distributions()
                                   if dist.metadata["Name"] and _normal(dist.metadata["Name"]) != "runstream"))
    _ok(subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--constraint", str(constraints), str(wheel)],
                       capture_output=True, text=True, timeout=300, check=False))
    yield BareSdk(venv)


@pytest.mark.slow
@pytest.mark.integration
def test_the_bare_wheel_brings_the_sdk_dependencies_and_nothing_else(bare_sdk: BareSdk) -> None:
    installed = json.loads(_ok(bare_sdk.python_code(
        "import json; from importlib import metadata; print(json.dumps([d.metadata['Name'] for d in "
        "metadata.distributions()]))")))
    sdk = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = {"runstream"} | {_normal(re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]) for req in sdk}
    # what pydantic-settings (the settings layer) brings: small, pure Python but for pydantic-core
    expected |= {"pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection",
                 "python-dotenv"}
    assert {_normal(name) for name in installed} == expected
    findable = json.loads(_ok(bare_sdk.python_code(
        f"import importlib.util, json; print(json.dumps({{m: importlib.util.find_spec(m) is not None "
        f"for m in {HEAVY!r}}}))")))
    assert findable == dict.fromkeys(HEAVY, False)


@pytest.mark.slow
@pytest.mark.integration
def test_the_bare_sdk_logs_a_run_to_the_spool(bare_sdk: BareSdk, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    out = _ok(bare_sdk.python_code(
        """
        import json, sys
        import runstream
        with runstream.init(project="slim", name="bare", params={"lr": 0.001, "optim": {"name": "adamw"}},
                            sample_interval=0) as run:
            for step in range(250):
                run.log({"loss": 1.0 / (step + 1), "acc": step / 250}, step=step)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("chdb", "pyarrow", "pandas", "clickhouse_connect", "prometheus_client"))
        print(json.dumps({"run_id": run.run_id, "heavy": heavy, "file": runstream.__file__}))
        """, env={"RUNSTREAM_SPOOL": str(spool)}))
    result = json.loads(out)
    assert result["heavy"] == []
    assert Path(result["file"]).is_relative_to(bare_sdk.venv), "the wheel's copy, not this checkout"
    # Read back with plain fastavro, in this process: 500 points, every step of both metrics, exact values.
    batches = spooled(spool, "metric_steps")
    points = [(b["metric_names"][i], s, v) for b in batches
              for i, s, v in zip(b["metric_index"], b["steps"], b["values"], strict=True)]
    assert {b["run_id"] for b in batches} == {result["run_id"]}
    assert len(points) == 500
    assert sorted(s for name, s, _ in points if name == "loss") == list(range(250))
    assert sum(v for name, _, v in points if name == "acc") == pytest.approx(sum(s / 250 for s in range(250)))
    [started] = spooled(spool, "run_started")
    assert started["run_name"] == "bare" and started["project"] == "slim"
    assert [f["status"] for f in spooled(spool, "run_finished")] == ["ok"]


@pytest.mark.slow
@pytest.mark.integration
def test_commands_and_imports_that_need_an_extra_name_it(bare_sdk: BareSdk, tmp_path: Path) -> None:
    runstream = bare_sdk.venv / "bin" / "runstream"
    for args in ([], ["run"], ["sync"], ["consume"], ["runs"], ["dashboards", "build"]):
        done = bare_sdk.run(runstream, *args, "--help")
        assert _ok(done).startswith("usage: runstream"), args
    for args in (["runs"], ["consume", "--kafka", "127.0.0.1:9"], ["ingest", str(tmp_path)], ["query", "SELECT 1"],
                 ["demo", "--runs", "1"], ["monitor"]):
        done = bare_sdk.run(runstream, *args, env={"HOME": str(tmp_path)})
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        [line] = done.stderr.splitlines()  # one line, no traceback
        match = EXTRA_LINE.match(line)
        assert match and match.group(1) == args[0], line
    done = bare_sdk.run(runstream, "dashboards", "build", "--out", str(tmp_path / "dash"))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert re.fullmatch(r"runstream dashboards: needs the dashboards extra: pip install 'runstream\[dashboards\]' "
                        r"\(missing module (attr|grafanalib)\)", line), line
    for statement, feature in (("from runstream.consumer import ConsumerService", "runstream.consumer.ConsumerService"),
                               ("import runstream; runstream.Client", "runstream.Client")):
        done = bare_sdk.python_code(
            f"""
            try:
                {statement}
            except ImportError as error:
                print(type(error).__mro__[1].__name__, error)
            """)
        assert _ok(done).startswith(f"ImportError {feature} needs the server extra: pip install 'runstream[server]' "
                                    "(missing module "), done.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_the_bare_sdk_wraps_a_command_and_syncs_it_to_kafka(bare_sdk: BareSdk, tmp_path: Path, kafka_bootstrap: str,
                                                            clickhouse_dsn: str, topic_prefix: str) -> None:
    spool = tmp_path / "spool"
    script = "for s in range(40): print(f'step={s} loss={1 / (s + 1)}', flush=True)"
    wrapped = bare_sdk.run(bare_sdk.venv / "bin" / "runstream", "run", "--project", "slim", "--name", "wrapped",
                           "--param", "lr=3e-4", "--sample-interval", "0", "--spool", str(spool),
                           "--metric-pattern", r"step=(?P<step>\d+) loss=(?P<loss>[0-9.eE+-]+)",
                           "--", str(bare_sdk.python), "-c", script)
    assert _ok(wrapped).count("loss=") == 40, "the wrapped command's output passes through"
    files = sorted(spool.rglob("*.avro"))
    spooled_events = read_spool(spool)
    events = sum(len(records) for records in spooled_events.values())
    assert sum(len(b["steps"]) for b in spooled_events["metric_steps"]) == 40

    synced = bare_sdk.run(bare_sdk.venv / "bin" / "runstream", "sync", str(spool), "--kafka", kafka_bootstrap,
                          "--topic-prefix", topic_prefix, "--timeout", "30", timeout=90)
    assert f"synced {len(files)} files ({events} events)" in _ok(synced)
    assert not any(path.exists() for path in files), "every acknowledged file is removed"

    # This environment's consumer (the server extra) stores what the bare SDK sent: 40 points, once.
    from runstream.consumer import ConsumerService, ConsumerSettings
    from runstream.consumer.dsn import connect

    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn,
                                               topic_prefix=topic_prefix, batch_max_wait_s=0.2))
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # the deadline: a consumer that never sees them fails the counts below
    timer.start()
    try:
        stats = service.run(stop, stop_when=lambda stats: stats.events + stats.dead_letters >= events)
    finally:
        timer.cancel()
    assert (stats.events, stats.points, stats.dead_letters) == (events, 40, 0)
    client, database = connect(clickhouse_dsn)
    for final in ("", "FINAL"):
        [(points, steps, total)] = client.query(
            f"SELECT count(), sum(step), sum(value) FROM {database}.metric_points {final}").result_rows
        assert (points, steps) == (40, sum(range(40)))
        assert total == pytest.approx(sum(1 / (s + 1) for s in range(40)))
    [(status,)] = client.query(f"SELECT status FROM {database}.run_finishes FINAL").result_rows
    assert status == "ok"
