"""The consumer as operators run it: its process, endpoints, configuration, retries and scaling out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

import runstream
from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings
from runstream.consumer.batch import Batch
from runstream.consumer.config import ConfigError, load_consumer_config
from runstream.consumer.retry import RetryPolicy, ShutdownRequested, retry
from runstream.consumer.topics_admin import ensure_topics
from runstream.producer.kafka_settings import Secret
from runstream.producer.run import producer_stats
from runstream.schemas import topic_for

FAST_RETRY = RetryPolicy(attempts=5, deadline_s=30, initial_backoff_s=0.05, max_backoff_s=0.2)


def log_runs(kafka: str, prefix: str, runs: int, steps: int, first_index: int = 0) -> int:
    """Log runs (named run-N from `first_index`) through the SDK; return the number of events sent."""
    before = producer_stats()["sent_events"]
    for index in range(first_index, first_index + runs):
        run = runstream.init("svc", f"run-{index}", kafka=kafka, topic_prefix=prefix, sample_interval=0)
        for step in range(steps):
            run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
            if step % 100 == 99:
                run.flush()  # several metric_steps events per run, spread over partitions by run id
        run.finish()
    return producer_stats()["sent_events"] - before


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.integration
def test_consume_process_serves_metrics_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    events = log_runs(kafka_bootstrap, topic_prefix, runs=3, steps=200)
    config = tmp_path / "consumer.toml"
    config.write_text(
        "[consumer]\n"
        f'topic_prefix = "{topic_prefix}"\n'
        "batch_max_wait = 0.2\n"
        "[kafka]\n"
        '"client.rack" = "rack-1"\n'
    )
    dsn = f"chdb://{tmp_path / 'ch'}"
    env = {**os.environ, "RUNSTREAM_KAFKA_SASL_PASSWORD": "hunter2-secret"}
    process = subprocess.Popen(
        [sys.executable, "-m", "runstream.cli", "-v", "consume", "--config", str(config), "--kafka", kafka_bootstrap,
         "--clickhouse", dsn, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("serving /metrics"), first
    port = int(first.split("port ")[1])
    deadline = time.monotonic() + 90
    points = 0.0
    while time.monotonic() < deadline:
        status, text = scrape(port, "/metrics")
        assert status == 200
        points = metric_value(text, "runstream_consumer_metric_points_total")
        if points >= 1200 and metric_value(text, 'runstream_consumer_events_total{event_type="run_finished"}') >= 3:
            break
        process.stdout.flush()
        threading.Event().wait(0.2)  # polling an HTTP endpoint for progress, not ordering a race
    assert points == 1200
    assert scrape(port, "/healthz")[0] == 200 and scrape(port, "/readyz")[0] == 200
    assert scrape(port, "/nope")[0] == 404
    assert 'runstream_consumer_rows_inserted_total{table="metric_points"} 1200.0' in scrape(port, "/metrics")[1]
    assert metric_value(scrape(port, "/metrics")[1], "runstream_consumer_last_commit_timestamp_seconds") > 0
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"{events} events, 1200 metric points" in out
    assert "hunter2-secret" not in out + err, "secrets never reach the logs"
    assert "sasl.password=***" in err
    # The offsets were committed up to the end of every partition. (Read with committed(), not by
    # joining the group: the stopped consumer is a static member, which keeps its partitions until its
    # session times out, so a new member would see nothing for up to 45 s whether or not they were.)
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "runstream-consumer",
                       "enable.auto.commit": False})
    topic = topic_for(topic_prefix, "metric_steps")
    partitions = [TopicPartition(topic, p) for p in reader.list_topics(topic, timeout=10).topics[topic].partitions]
    committed = reader.committed(partitions, timeout=10)
    ends = [reader.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
    reader.close()
    assert sum(ends) > 0
    for tp, end in zip(committed, ends, strict=True):
        assert tp.offset == end or end == 0, f"partition {tp.partition}: committed {tp.offset}, end {end}"


class FlakyClickHouse(ClickHouseSink):
    """A real sink whose first writes fail like a ClickHouse that is restarting (fault injection)."""

    failures_left = 0

    def write(self, batch: Batch) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("Connection refused")
        super().write(batch)


@pytest.mark.integration
def test_clickhouse_outage_is_retried_without_loss_or_early_commit(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    events = log_runs(kafka_bootstrap, topic_prefix, runs=2, steps=150)
    sink = FlakyClickHouse(clickhouse_dsn)
    sink.failures_left = 3
    service = ConsumerService(
        ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                         batch_max_wait_s=0.2),
        sink=sink, retry_policy=FAST_RETRY,
    )
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)
    timer.start()
    stats = service.run(stop, stop_when=lambda s: s.events >= events)
    timer.cancel()
    assert stats.events == events
    assert service.metrics.write_retries._value.get() == 3
    client, db = sink.client, sink.database
    assert client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0] == 600


@pytest.mark.integration
@pytest.mark.slow
def test_two_consumers_share_partitions_and_a_stopped_one_loses_nothing(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str
) -> None:
    ensure_topics(kafka_bootstrap, topic_prefix, partitions=6)
    settings = ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                                group_id="pair", batch_max_points=500, batch_max_wait_s=0.2)
    first, second = ConsumerService(settings), ConsumerService(settings)
    stop_first, stop_second = threading.Event(), threading.Event()
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("first", first.run(stop_first))),
        threading.Thread(target=lambda: results.__setitem__("second", second.run(stop_second))),
    ]
    for thread in threads:
        thread.start()
    # Both members must hold partitions before anything is logged: under load the second can join late,
    # and a member that joined after the stream was read would have nothing left to do.
    metric_partitions = {(topic_for(topic_prefix, "metric_steps"), partition) for partition in range(6)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            first.source.assigned & metric_partitions and second.source.assigned & metric_partitions
            and (first.source.assigned | second.source.assigned) >= metric_partitions):
        threading.Event().wait(0.05)
    assert first.source.assigned and second.source.assigned, "both members joined the group"

    def consumed(expected: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while first.stats.events + second.stats.events < expected and time.monotonic() < deadline:
            threading.Event().wait(0.05)

    # Runs are keyed by a random run id, so which member reads a run is chance (a run goes to the first
    # with probability 1/2): log runs one at a time, each read before the next, until the first has
    # written one, then stop it while the group still has work.
    events = runs = 0
    while first.stats.events == 0 and runs < 12:
        events += log_runs(kafka_bootstrap, topic_prefix, runs=1, steps=300, first_index=runs)
        runs += 1
        consumed(events, 60)
    assert first.stats.events > 0, f"the first member read none of {runs} runs"
    events += log_runs(kafka_bootstrap, topic_prefix, runs=2, steps=300, first_index=runs)
    runs += 2
    stop_first.set()
    threads[0].join(60)
    events += log_runs(kafka_bootstrap, topic_prefix, runs=2, steps=300, first_index=runs)
    runs += 2
    consumed(events, 90)
    stop_second.set()
    threads[1].join(60)
    assert first.stats.events > 0 and second.stats.events > 0, "both members did part of the work"
    assert first.stats.events + second.stats.events >= events
    client, db = second.sink.client, second.sink.database
    final = client.query(f"SELECT count(), uniqExact(run_id) FROM {db}.metric_points FINAL").result_rows[0]
    assert final == (runs * 300 * 2, runs)
    assert client.query(f"SELECT count() FROM {db}.run_finishes FINAL").result_rows[0][0] == runs


def test_config_precedence_validation_and_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[consumer]\nkafka = "file:9092"\ngroup = "from-file"\nbatch_max_points = 10\n'
                    '[kafka]\n"sasl.password" = "s3cret"\n"enable.ssl.certificate.verification" = false\n'
                    '[clickhouse]\nuser = "alice"\npassword = "pw!"\n')
    config = load_consumer_config(
        {"group": "from-args", "clickhouse": "https://ch.example:8443/rs"},
        {"RUNSTREAM_BATCH_MAX_POINTS": "20", "RUNSTREAM_KAFKA_SASL_USERNAME": "bob"},
        path,
    )
    s = config.settings
    assert (s.kafka, s.group_id, s.batch_max_points) == ("file:9092", "from-args", 20)
    assert dict(s.kafka_options) == {"sasl.password": Secret("s3cret"), "sasl.username": "bob",
                                     "enable.ssl.certificate.verification": "false"}
    assert s.clickhouse == "https://alice:pw%21@ch.example:8443/rs"
    for text in (repr(s), repr(config), config.describe()):
        assert "s3cret" not in text and "pw%21" not in text and "pw!" not in text
    path.write_text('[consumer]\nkafka = "k:1"\nbatch_size = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[consumer\]: batch_size"):
        load_consumer_config({}, {}, path)
    path.write_text('[consumer]\nkafka = "k:1"\nclickhouse = "chdb:///tmp/x"\n')
    with pytest.raises(ConfigError, match=r"\[consumer\] clickhouse: the DSN is one setting for every command, "
                                          r"\[clickhouse\] dsn"):
        load_consumer_config({}, {}, path)
    path.write_text('[consumer]\nkafka = "k:1"\n[clickhouse]\ndsn = "https://file.example:8443/rs"\n')
    assert load_consumer_config({}, {}, path).settings.clickhouse == "https://file.example:8443/rs"
    assert load_consumer_config({}, {"RUNSTREAM_CLICKHOUSE": "https://env.example:8443/rs"},
                                path).settings.clickhouse == "https://env.example:8443/rs"
    with pytest.raises(ConfigError, match="environment RUNSTREAM_BATCH_MAX_WAIT: batch_max_wait must be float"):
        load_consumer_config({"kafka": "k:1"}, {"RUNSTREAM_BATCH_MAX_WAIT": "soon"})
    with pytest.raises(ConfigError, match="kafka: bootstrap servers are required"):
        load_consumer_config({}, {})
    with pytest.raises(ConfigError, match="partitions: expected at least 1, got 0"):
        load_consumer_config({"kafka": "k:1", "partitions": 0}, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_consumer_config({"kafka": "k:1"}, {}, tmp_path / "missing.toml")


def test_retry_helper_backs_off_stops_and_respects_shutdown() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("refused")
        return "done"

    assert retry(flaky, policy=FAST_RETRY, stop=threading.Event(), what="test") == "done"
    assert len(calls) == 3
    with pytest.raises(ValueError, match="bad data"):
        retry(lambda: (_ for _ in ()).throw(ValueError("bad data")), policy=FAST_RETRY, stop=threading.Event(),
              what="test")
    stop = threading.Event()
    stop.set()
    with pytest.raises(ShutdownRequested):
        retry(lambda: (_ for _ in ()).throw(ConnectionError("x")), policy=FAST_RETRY, stop=stop, what="test")
    attempts: list[int] = []

    def always_down() -> None:
        attempts.append(1)
        raise TimeoutError("down")

    with pytest.raises(TimeoutError):
        retry(always_down, policy=RetryPolicy(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02),
              stop=threading.Event(), what="test")
    assert len(attempts) == 3
