"""Every runstream Kafka client against the local 3-broker cluster's SASL_SSL listener (SCRAM-SHA-512).

The SDK (configured by environment variables only, as a training job would be), `runstream run`,
`runstream sync` and `runstream consume` authenticate end to end into chDB, and the points are
counted. A wrong password stops `sync` and `consume` with an error that names the user and never
the password; no log line of the test (caplog and every subprocess's output) contains a password.
Topics made by `ensure_topics` get the cluster's replication factor 3 and min.insync.replicas 2.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource, ConfigSource
from kafka_cluster import KafkaCluster

import runstream
from runstream.consumer.topics_admin import ensure_topics
from runstream.producer.kafka_settings import KafkaSettings
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.schemas import EVENT_TYPES, dead_letter_topic, topic_for
from runstream.schemas.spool import read_spool_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}


def _sasl_environment(cluster: KafkaCluster, prefix: str, *, password: str | None = None) -> dict[str, str]:
    """What a training job's or a pod's environment would hold: no option on any command line."""
    return {
        "RUNSTREAM_KAFKA": cluster.sasl_bootstrap,
        "RUNSTREAM_TOPIC_PREFIX": prefix,
        "RUNSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RUNSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "RUNSTREAM_KAFKA_SASL_USERNAME": cluster.username,
        "RUNSTREAM_KAFKA_SASL_PASSWORD": cluster.password if password is None else password,
        "RUNSTREAM_KAFKA_SSL_CA_LOCATION": str(cluster.ca_location),
    }


def _cli(args: list[str], env: dict[str, str], outputs: list[str], *, timeout: float = 120,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "runstream.cli", "-v", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False, cwd=cwd)
    outputs.extend([done.stdout, done.stderr])
    return done


@pytest.fixture
def outputs(kafka_cluster: KafkaCluster, caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Everything the test's processes wrote; at the end, no line of it, nor of the test's own log, has a password."""
    collected: list[str] = []
    with caplog.at_level(logging.DEBUG):
        yield collected
    text = "\n".join([*collected, caplog.text])
    for secret in (kafka_cluster.password, WRONG_PASSWORD):
        leaking = [line for line in text.splitlines() if secret in line]
        assert not leaking, f"{len(leaking)} log line(s) hold a password"


def test_every_client_authenticates_with_scram_over_sasl_ssl(
    kafka_cluster: KafkaCluster, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    outputs: list[str],
) -> None:
    env = {**_clean_environment(), **_sasl_environment(kafka_cluster, topic_prefix)}
    kafka = KafkaSettings.resolve(environ=env)
    assert kafka is not None and kafka.security_protocol == "SASL_SSL"
    created = ensure_topics(kafka, topic_prefix, partitions=3)
    assert len(created) == len(EVENT_TYPES) + 1

    # 1. the SDK, configured by the environment alone
    for name, value in _sasl_environment(kafka_cluster, topic_prefix).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RUNSTREAM_SPOOL", str(tmp_path / "sdk-spool"))
    run = runstream.init("secure", "sdk", sample_interval=0)
    assert run.settings.kafka == kafka_cluster.sasl_bootstrap
    for step in range(200):
        run.log({"loss": 1.0 / (step + 1), "acc": step / 200}, step=step)
    run.finish()
    assert not list((tmp_path / "sdk-spool").rglob("*.avro*")), "nothing may have been spooled: Kafka took it all"

    # 2. `runstream run` around an unmodified script
    script = "for i in range(100): print(f'step={i} loss={1 / (i + 1)}')"
    done = _cli(["run", "--project", "secure", "--name", "wrapped", "--sample-interval", "0",
                 "--spool", str(tmp_path / "run-spool"),
                 "--metric-pattern", r"step=(?P<step>\d+) loss=(?P<loss>[0-9.eE+-]+)", "--", sys.executable, "-c",
                 script], env, outputs)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "run-spool").rglob("*.avro*"))

    # 3. `runstream sync` of an offline run, the password from its config file's [kafka] table
    offline = tmp_path / "offline"
    run = Run(project="secure", name="offline", settings=ProducerSettings(spool=offline, sample_interval_s=0))
    for step in range(150):
        run.log({"loss": float(step)}, step=step)
    run.finish()
    config = tmp_path / "sync.toml"
    config.write_text(f'[kafka]\n"sasl.password" = "{kafka_cluster.password}"\n')
    config.chmod(0o600)
    sync_env = {k: v for k, v in env.items() if k != "RUNSTREAM_KAFKA_SASL_PASSWORD"}
    done = _cli(["sync", str(offline), "--config", str(config)], sync_env, outputs)
    assert done.returncode == 0, done.stderr
    assert "synced" in done.stdout and not list(offline.rglob("*.avro"))

    # 4. `runstream consume`: the CA file as a --kafka-option, the rest from the environment
    consume_env = {k: v for k, v in env.items() if k != "RUNSTREAM_KAFKA_SSL_CA_LOCATION"}
    dsn = f"chdb://{tmp_path / 'ch'}"
    done = _cli(["consume", "--clickhouse", dsn, "--group", f"g-{uuid.uuid4().hex[:8]}", "--instance-id", "",
                 "--batch-max-wait", "0.2", "--idle-exit", "6",
                 "--kafka-option", f"ssl.ca.location={kafka_cluster.ca_location}"], consume_env, outputs, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "650 metric points" in done.stdout, done.stdout
    for final in ("", " FINAL"):
        query = (f"SELECT (SELECT count() FROM metric_points{final}), (SELECT sum(value) FROM metric_points{final}), "
                 f"(SELECT count() FROM run_finishes{final})")
        done = _cli(["query", query, "--clickhouse", dsn, "--format", "csv"], _clean_environment(), outputs)
        assert done.returncode == 0, done.stderr
        count, total, finishes = done.stdout.strip().splitlines()[-1].split(",")
        expected_sum = (sum(1.0 / (s + 1) + s / 200 for s in range(200)) + sum(1 / (i + 1) for i in range(100))
                        + sum(range(150)))
        assert int(count) == 200 * 2 + 100 + 150, final
        assert float(total) == pytest.approx(expected_sum, rel=1e-6), final
        assert int(finishes) == 3, final


def test_a_wrong_password_is_a_clear_error_without_the_password(
    kafka_cluster: KafkaCluster, topic_prefix: str, tmp_path: Path, outputs: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {**_clean_environment(), **_sasl_environment(kafka_cluster, topic_prefix, password=WRONG_PASSWORD)}
    offline = tmp_path / "offline"
    run = Run(project="secure", name="refused", settings=ProducerSettings(spool=offline, sample_interval_s=0))
    run.log({"loss": 1.0}, step=0)
    run.finish()
    done = _cli(["sync", str(offline), "--timeout", "20"], env, outputs)
    assert done.returncode == 2
    assert f"authentication failed at {kafka_cluster.sasl_bootstrap} as user '{kafka_cluster.username}'" in done.stderr
    assert list(offline.rglob("*.avro")), "the spool file is kept for a later sync"

    done = _cli(["consume", "--clickhouse", f"chdb://{tmp_path / 'ch'}", "--idle-exit", "5"], env, outputs,
                timeout=90)
    assert done.returncode == 2
    assert f"as user '{kafka_cluster.username}'" in done.stderr and "authentication failed" in done.stderr

    # the SDK must not fail the training loop: it says why once and keeps every event in its spool
    options = {**kafka_cluster.sasl_config(), "sasl.password": WRONG_PASSWORD}
    settings = ProducerSettings(kafka=kafka_cluster.sasl_bootstrap, kafka_options=options,  # type: ignore[arg-type]
                                topic_prefix=topic_prefix, spool=tmp_path / "sdk-spool", sample_interval_s=0,
                                delivery_timeout_s=3)
    run = Run(project="secure", name="refused-sdk", settings=settings)
    for step in range(20):
        run.log({"loss": float(step)}, step=step)
    run.finish()
    assert any("authentication failed" in record.getMessage() and kafka_cluster.username in record.getMessage()
               for record in caplog.records)
    spooled = [record for path in sorted((tmp_path / "sdk-spool").rglob("metric_steps.*.avro*"))
               for _type, record in read_spool_file(path)]
    assert sum(len(record["values"]) for record in spooled) == 20


def test_topics_are_created_with_replication_3_and_min_insync_2(
    kafka_cluster: KafkaCluster, topic_prefix: str, outputs: list[str],
) -> None:
    kafka = KafkaSettings(kafka_cluster.sasl_bootstrap, kafka_cluster.sasl_config())
    assert len(ensure_topics(kafka, topic_prefix, partitions=2)) == len(EVENT_TYPES) + 1  # the brokers' default
    explicit = f"{topic_prefix}x."
    ensure_topics(kafka, explicit, partitions=2, replication_factor=3, min_insync_replicas=2)
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})
    names = [topic_for(p, t) for p in (topic_prefix, explicit) for t in EVENT_TYPES]
    names += [dead_letter_topic(topic_prefix), dead_letter_topic(explicit)]
    deadline = time.monotonic() + 30
    metadata = admin.list_topics(timeout=30)
    while not set(names) <= set(metadata.topics) and time.monotonic() < deadline:  # metadata reaches every broker
        threading.Event().wait(0.2)
        metadata = admin.list_topics(timeout=30)
    for name in names:
        replicas = {len(partition.replicas) for partition in metadata.topics[name].partitions.values()}
        assert replicas == {3}, name
    for name, entry in _min_insync_entries(admin, names, time.monotonic() + 30).items():
        assert entry.value == "2", name
        source = getattr(entry.source, "value", entry.source)
        assert source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name  # set by ensure_topics itself


def _min_insync_entries(admin: AdminClient, names: list[str], deadline: float) -> dict[str, ConfigEntry]:
    """Each topic's `min.insync.replicas` entry, asking again for a topic a broker does not know yet.

    A new topic reaches the brokers' metadata one broker at a time: `list_topics` may be answered by a broker that
    has it while `describe_configs` goes to one that answers UNKNOWN_TOPIC_OR_PART for a moment longer.
    """
    entries: dict[str, ConfigEntry] = {}
    while True:
        missing = [name for name in names if name not in entries]
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name) for name in missing])
        for resource, future in futures.items():
            try:
                entries[resource.name] = future.result(30)["min.insync.replicas"]
            except KafkaException as error:
                if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                    raise
        if len(entries) == len(names):
            return entries
        threading.Event().wait(0.2)
