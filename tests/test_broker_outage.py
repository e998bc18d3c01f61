"""A broker that goes away mid-run and comes back: nothing logged is lost, nothing is stored twice.

The test runs a broker of its own (deploy/local/kafka.sh, restarted with its data on the same port).
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from runstream.consumer import ConsumerService, ConsumerSettings
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import KafkaSink

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KAFKA = Path(__file__).resolve().parent.parent / "deploy" / "local" / "kafka.sh"


def broker(command: str, folder: Path) -> str:
    done = subprocess.run(["bash", str(KAFKA), command, "--dir", str(folder)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"kafka.sh {command} failed:\n{done.stderr}", pytrace=False)
    return done.stdout.strip()


def test_events_logged_while_the_broker_is_down_are_spooled_and_replayed(
    tmp_path: Path, clickhouse_dsn: str, topic_prefix: str
) -> None:
    folder = tmp_path / "kafka"
    bootstrap = broker("start", folder)
    try:
        settings = ProducerSettings(kafka=bootstrap, topic_prefix=topic_prefix, spool=tmp_path / "spool",
                                    delivery_timeout_s=2.0, sample_interval_s=0)
        run = Run(project="outage", settings=settings)
        sink = run._worker._sink
        assert isinstance(sink, KafkaSink)
        for step in range(0, 300):
            run.log({"loss": float(step), "acc": step / 1000}, step=step)
        assert run.flush() == 0

        broker("stop", folder)
        for step in range(300, 600):
            run.log({"loss": float(step), "acc": step / 1000}, step=step)
        run.flush(timeout=15)
        assert sink.spooled > 0, "undeliverable events went to the spool"
        assert list((tmp_path / "spool").rglob("*.avro*")), "and the spool is on disk"

        assert broker("start", folder) == bootstrap, "the broker comes back on the same address"
        for step in range(600, 900):
            run.log({"loss": float(step), "acc": step / 1000}, step=step)
        run.finish()
        assert sink.replayed >= sink.spooled, "everything spooled was sent again once the broker was back"
        assert not list((tmp_path / "spool").rglob("*.avro*")), "replayed spool files are removed"

        service = ConsumerService(ConsumerSettings(kafka=bootstrap, clickhouse=clickhouse_dsn,
                                                   topic_prefix=topic_prefix))
        db = service.sink.database
        stop = threading.Event()
        timer = threading.Timer(90, stop.set)
        timer.start()

        def complete(_stats: object) -> bool:
            rows = service.sink.client.query(
                f"SELECT (SELECT count() FROM {db}.metric_points FINAL), (SELECT count() FROM {db}.run_finishes)"
            ).result_rows[0]
            return bool(rows[0] == 1800 and rows[1] >= 1)

        service.run(stop, stop_when=complete)
        timer.cancel()
        client = service.sink.client
        assert client.query(f"SELECT count(), sum(value) FROM {db}.metric_points FINAL WHERE metric = 'loss'"
                            ).result_rows[0] == (900, float(sum(range(900))))
        assert client.query(f"SELECT status FROM {db}.run_finishes FINAL").result_rows == [("ok",)]
    finally:
        broker("stop", folder)


def test_the_consumer_rides_out_a_broker_restart(tmp_path: Path, clickhouse_dsn: str, topic_prefix: str) -> None:
    folder = tmp_path / "kafka"
    bootstrap = broker("start", folder)
    try:
        settings = ProducerSettings(kafka=bootstrap, topic_prefix=topic_prefix, spool=tmp_path / "spool",
                                    sample_interval_s=0)
        service = ConsumerService(ConsumerSettings(kafka=bootstrap, clickhouse=clickhouse_dsn,
                                                   topic_prefix=topic_prefix, batch_max_wait_s=0.2))
        stop = threading.Event()
        worker = threading.Thread(target=service.run, args=(stop,))
        worker.start()
        first = Run(project="consumer-outage", settings=settings)
        for step in range(200):
            first.log({"loss": float(step)}, step=step)
        first.finish()
        deadline = threading.Event()
        for _ in range(300):
            if service.stats.points >= 200:
                break
            deadline.wait(0.1)
        assert service.stats.points == 200

        broker("stop", folder)
        deadline.wait(2.0)  # the consumer polls a dead broker for a while: it must not crash
        assert worker.is_alive()
        assert broker("start", folder) == bootstrap

        second = Run(project="consumer-outage", settings=settings)
        for step in range(300):
            second.log({"loss": float(step)}, step=step)
        second.finish()
        for _ in range(1800):  # a rejoin after the restart can take a while on a loaded machine
            if service.stats.points >= 500:
                break
            deadline.wait(0.1)
        stop.set()
        worker.join(60)
        db = service.sink.database
        rows = service.sink.client.query(
            f"SELECT run_id, count() FROM {db}.metric_points FINAL GROUP BY run_id ORDER BY run_id").result_rows
        assert [count for _, count in rows] == [200, 300]
    finally:
        broker("stop", folder)
