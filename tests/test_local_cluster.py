"""The local 3-broker cluster itself: SCRAM over SASL_SSL works, a leader killed -9 loses nothing, secrets stay put.

These run on the `kafka_cluster` session fixture (deploy/local/kafka.sh start --brokers 3), so they also prove
the fixture other fault tests rely on: `kill` is a real SIGKILL, `start_broker` brings the broker back with its
data, `leader` names the broker the cluster's metadata names.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # defined in cimpl
from kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 6000


class _Lines(logging.Handler):
    """Keeps librdkafka's log lines so a test can look for secrets in them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _client_logger(name: str) -> tuple[logging.Logger, _Lines]:
    logger = logging.getLogger(f"runstream.tests.{name}.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    lines = _Lines()
    logger.addHandler(lines)
    return logger, lines


def _create_topic(cluster: KafkaCluster, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.sasl_bootstrap, **cluster.sasl_config()})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=3, config={"min.insync.replicas": "2"})],
        operation_timeout=30,
    )
    futures[topic].result(timeout=60)


def test_scram_producer_survives_the_leader_killed_and_restarted(kafka_cluster: KafkaCluster) -> None:
    cluster = kafka_cluster
    topic = f"cluster-{uuid.uuid4().hex[:10]}"
    _create_topic(cluster, topic)
    assert cluster.wait_for_isr(topic, 0, 3) == [1, 2, 3], "rf 3: every broker holds a replica"
    leader = cluster.leader(topic, 0)

    logger, client_lines = _client_logger("producer")
    delivered: list[bytes] = []
    failed: list[str] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failed.append(str(error))
        else:
            delivered.append(message.value() or b"")

    producer = Producer({
        "bootstrap.servers": cluster.sasl_bootstrap, **cluster.sasl_config(),
        "acks": "all", "enable.idempotence": True, "linger.ms": 5, "message.timeout.ms": 90000,
        "logger": logger,
    })
    killed: int | None = None
    try:
        for index in range(MESSAGES):
            if index == MESSAGES // 2:
                assert producer.flush(30) == 0, "the first half is acknowledged by the first leader"
                assert len(delivered) == MESSAGES // 2
            if index == 3 * MESSAGES // 4:
                # the third quarter is still in flight (not flushed) when its leader dies
                killed = leader
                cluster.kill(killed)
                assert not cluster.running(killed), f"broker {killed} is gone after SIGKILL"
            producer.produce(topic, value=f"message-{index}".encode(), key=str(index % 7).encode(),
                             on_delivery=on_delivery)
            producer.poll(0)
        assert producer.flush(90) == 0, "production completes on the surviving brokers"
        assert failed == []
        assert len(delivered) == MESSAGES
        assert killed is not None
        new_leader = cluster.wait_for_leader_change(topic, 0, killed)
        assert new_leader in cluster.broker_ids and new_leader != killed

        cluster.start_broker(killed)
        assert cluster.running(killed)
        assert cluster.wait_for_isr(topic, 0, 3) == [1, 2, 3], "the restarted broker caught up with its data"
    finally:
        if killed is not None:
            cluster.heal()

    consumer = Consumer({
        "bootstrap.servers": cluster.sasl_bootstrap, **cluster.sasl_config(),
        "group.id": f"g-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "logger": logger,
    })
    read: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 45
        while len(read) < MESSAGES and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                assert message.error() is None, message.error()
                read.append(message.value() or b"")
        # a little longer, to see a duplicate that would arrive after the N-th message
        for message in consumer.consume(num_messages=1000, timeout=1.0):
            read.append(message.value() or b"")
    finally:
        consumer.close()
    assert len(set(read)) == MESSAGES, "every acknowledged message is on the cluster"
    assert len(read) == MESSAGES, "and none twice (idempotent producer across the failover)"
    assert set(read) == {f"message-{index}".encode() for index in range(MESSAGES)}
    assert not [line for line in client_lines.lines if cluster.password in line]


def test_a_wrong_password_is_refused_without_showing_it(kafka_cluster: KafkaCluster) -> None:
    wrong = f"not-{uuid.uuid4().hex}"
    errors: list[KafkaError] = []
    logger, client_lines = _client_logger("wrong-password")
    config: dict[str, Any] = {
        "bootstrap.servers": kafka_cluster.sasl_bootstrap, **kafka_cluster.sasl_config(),
        "sasl.password": wrong, "error_cb": errors.append, "logger": logger,
    }
    producer = Producer(config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        producer.poll(0.2)
    refused = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert refused, f"no authentication error within 30 s; errors: {[e.code() for e in errors]}"
    text = refused[0].str()
    assert "SCRAM-SHA-512" in text and "authentication" in text.lower(), text
    for secret in (wrong, kafka_cluster.password):
        assert all(secret not in str(e) for e in errors)
        assert not [line for line in client_lines.lines if secret in line]


def test_the_password_is_only_in_the_credentials_file(kafka_cluster: KafkaCluster) -> None:
    assert kafka_cluster.password not in repr(kafka_cluster)
    assert (kafka_cluster.dir / "credentials").stat().st_mode & 0o777 == 0o600
    assert kafka_cluster.log_files(), "the brokers' logs are there to search"
    secret = kafka_cluster.password.encode()
    holding = [
        path for path in kafka_cluster.dir.rglob("*")
        if path.is_file() and path.name != "credentials" and secret in path.read_bytes()
    ]
    assert holding == [], "no broker log, property file or data file holds the SCRAM password"
