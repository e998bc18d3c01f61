"""Session fixtures for the real services: a local Kafka broker and the embedded ClickHouse (chDB).

Set RUNSTREAM_TEST_KAFKA (bootstrap servers) or RUNSTREAM_TEST_CLICKHOUSE (a chdb:/// or http(s)://
DSN base) to use services you run yourself. Otherwise the broker is started by
deploy/local/kafka.sh; if it cannot start, every test that needs it fails with the broker's log.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import fresh_database_dsn
from fault_table import FaultTable
from fault_table import from_environment as fault_table_from_environment
from kafka_cluster import ClusterError, KafkaCluster

REPO = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka.sh"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RUNSTREAM_TEST_KAFKA")
    if external:
        yield external
        return
    run_dir = tmp_path_factory.mktemp("kafka")
    started = subprocess.run(
        ["bash", str(KAFKA_SCRIPT), "start", "--dir", str(run_dir)], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        pytest.fail(
            f"the local Kafka broker could not start (exit {started.returncode}):\n{started.stderr}\n{started.stdout}",
            pytrace=False,
        )
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(KAFKA_SCRIPT), "stop", "--dir", str(run_dir)], check=False)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """The local 3-broker SASL_SSL cluster (tests/kafka_cluster.py), started by the first test that asks.

    RUNSTREAM_TEST_KAFKA_CLUSTER names the folder of a cluster already started with
    `deploy/local/kafka.sh start --brokers 3 --dir DIR`; it is used and left running. A test that kills a
    broker restarts it (`start_broker`, or `heal()` in a finally) so the next test gets all three.
    """
    external = os.environ.get("RUNSTREAM_TEST_KAFKA_CLUSTER")
    if external:
        try:
            attached = KafkaCluster.attach(Path(external))
        except ClusterError as error:
            pytest.fail(f"RUNSTREAM_TEST_KAFKA_CLUSTER={external}: {error}", pytrace=False)
        yield attached
        return
    run_dir = tmp_path_factory.mktemp("kafka-cluster")
    try:
        cluster = KafkaCluster.start(run_dir)
    except ClusterError as error:
        pytest.fail(f"the local 3-broker Kafka cluster could not start:\n{error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


#: Test files that need the frameworks' environment (scripts/frameworks_env.sh), which `make test` builds
#: beside its other steps: collected last, so that a one-process run (`make test PYTEST_WORKERS=`) meets them
#: after the build. (pytest-xdist's loadfile hands out the largest files first whatever the order, so there a
#: worker may wait for the build: up to about 3 minutes in CI, with the suite at 11.5 minutes.)
LAST_FILES = ("test_frameworks.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the files of LAST_FILES after all others (a stable sort: every worker collects the same order)."""
    items.sort(key=lambda item: item.path.name in LAST_FILES)


@pytest.fixture(scope="module")
def db(dsn: str) -> Iterator[tuple[Any, str]]:
    """(client, database) of the module's `dsn` fixture (a module that loads one workload for its tests)."""
    from runstream.consumer.dsn import connect

    client, database = connect(dsn, create_database=False)
    yield client, database
    client.close()


class _EngineKeeper:
    """One client held on the session's chDB path while tests that use it run.

    chDB shuts its engine down when the last client closes, and the next client re-opens it, loading every
    database the earlier tests created: each CLI call of tests/test_exact_outputs.py (a client opened and
    closed) took 0.3 s alone and 2-5 s after three other test files in the same worker (the test: 5 s alone,
    35-101 s in the suite; with the engine held, 1.5 s). A process holds one chDB path at a time, so the
    keeper lets go before a test that does not use the session's path (it may open a folder of its own)."""

    def __init__(self) -> None:
        self.base: str | None = None
        self.client: Any = None

    def hold(self) -> None:
        if self.base is not None and self.client is None:
            import clickhouse_connect

            self.client = clickhouse_connect.get_client(dsn=self.base)

    def release(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


_ENGINE = _EngineKeeper()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a test's fixtures: hold the session's engine for a test that uses it, let it go otherwise."""
    if "clickhouse_base" in getattr(item, "fixturenames", ()):
        _ENGINE.hold()
    else:
        _ENGINE.release()


@pytest.fixture(scope="session")
def clickhouse_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One chDB engine path for the whole session: chDB allows one path per process (held by `_ENGINE`)."""
    external = os.environ.get("RUNSTREAM_TEST_CLICKHOUSE")
    if external:
        yield external.split("?")[0].rstrip("/")
        return
    _ENGINE.base = f"chdb://{tmp_path_factory.mktemp('chdb')}"
    _ENGINE.hold()
    try:
        yield _ENGINE.base
    finally:
        _ENGINE.release()
        _ENGINE.base = None


@pytest.fixture
def clickhouse_dsn(clickhouse_base: str) -> str:
    """A DSN naming a database of its own, so tests never see each other's rows."""
    return fresh_database_dsn(clickhouse_base)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture(scope="session")
def fault_table() -> FaultTable:
    """Where fault tests record their counts (printed by bench/faults.py)."""
    return fault_table_from_environment()
