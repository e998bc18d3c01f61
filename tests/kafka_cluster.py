"""The local 3-broker Kafka cluster as the tests see it: addresses, SCRAM credentials, and the faults.

`deploy/local/kafka.sh start --brokers 3` makes the cluster (KRaft, each broker its own process; a PLAINTEXT
listener and a SASL_SSL one with SCRAM-SHA-512); this module reads what it wrote in its folder (bootstrap
lists, `ca.pem`, `credentials`) and drives the script for the faults: `kill` (SIGKILL of one broker),
`start_broker` and `leader`. The `kafka_cluster` session fixture in conftest.py hands out one of these.

The SCRAM password is a field of the dataclass but never shows in its repr; `sasl_config()` returns it as a
librdkafka option, so never print that dict.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

KAFKA_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "local" / "kafka.sh"
BROKERS = 3


class ClusterError(RuntimeError):
    """kafka.sh could not start, stop or fault the cluster; the message carries the brokers' log tails."""


def _script(command: list[str], *, timeout: float) -> str:
    """Run kafka.sh, return its stdout; raise ClusterError with its stderr (the log tails) on failure."""
    try:
        done = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), *command], capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        raise ClusterError(f"kafka.sh {' '.join(command)} did not finish within {timeout:.0f} s") from error
    if done.returncode != 0:
        raise ClusterError(
            f"kafka.sh {' '.join(command)} failed (exit {done.returncode}):\n{done.stderr}\n{done.stdout}"
        )
    return done.stdout


def _read_credentials(path: Path) -> tuple[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    try:
        return values["username"], values["password"]
    except KeyError as missing:
        raise ClusterError(f"{path}: no {missing.args[0]!r} line") from None


@dataclass
class KafkaCluster:
    """A running local cluster; every method acts on the real broker processes."""

    dir: Path
    bootstrap: str
    sasl_bootstrap: str
    username: str
    password: str = field(repr=False)
    ca_location: Path
    broker_ids: list[int]

    @classmethod
    def attach(cls, folder: Path) -> KafkaCluster:
        """The cluster kafka.sh started in `folder` (RUNSTREAM_TEST_KAFKA_CLUSTER, or after `start`)."""
        folder = Path(folder).resolve()
        try:
            count = int((folder / "brokers").read_text().strip())
            bootstrap = (folder / "bootstrap").read_text().strip()
            sasl_bootstrap = (folder / "sasl_bootstrap").read_text().strip()
        except (OSError, ValueError) as error:
            raise ClusterError(f"{folder} holds no cluster started by kafka.sh start --brokers N: {error}") from error
        username, password = _read_credentials(folder / "credentials")
        return cls(
            dir=folder,
            bootstrap=bootstrap,
            sasl_bootstrap=sasl_bootstrap,
            username=username,
            password=password,
            ca_location=folder / "ca.pem",
            broker_ids=list(range(1, count + 1)),
        )

    @classmethod
    def start(cls, folder: Path, *, timeout: float = 240) -> KafkaCluster:
        """Start (or restart, with its data) the cluster in `folder` and wait until every broker serves."""
        output = _script(["start", "--brokers", str(BROKERS), "--dir", str(folder)], timeout=timeout)
        cluster = cls.attach(folder)
        if cluster.password in output:
            raise ClusterError("kafka.sh start printed the SCRAM password on stdout")
        if output.strip().splitlines()[-1] != cluster.bootstrap:
            raise ClusterError(f"kafka.sh start printed {output.strip()!r}, D/bootstrap says {cluster.bootstrap!r}")
        return cluster

    def stop(self) -> None:
        """Stop every broker (SIGTERM, then SIGKILL for one still running 20 s later)."""
        _script(["stop", "--dir", str(self.dir)], timeout=60)

    def kill(self, broker_id: int) -> None:
        """SIGKILL one broker: no controlled shutdown, nothing flushed; returns once the process is gone."""
        self._check(broker_id)
        _script(["kill", str(broker_id), "--dir", str(self.dir)], timeout=30)

    def start_broker(self, broker_id: int, *, timeout: float = 180) -> None:
        """Start one broker again with its data and ports; returns once it accepts connections."""
        self._check(broker_id)
        _script(["start-broker", str(broker_id), "--dir", str(self.dir)], timeout=timeout)

    def running(self, broker_id: int) -> bool:
        """Whether that broker's process is alive (kafka.sh's own check, pid and command line)."""
        self._check(broker_id)
        status = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "status", "--dir", str(self.dir)],
            capture_output=True, text=True, check=False, timeout=30,
        )
        return f"broker {broker_id}: running" in status.stdout

    def heal(self) -> None:
        """Start every broker that is not running: a test that killed one puts the cluster back for the next."""
        for broker_id in self.broker_ids:
            if not self.running(broker_id):
                self.start_broker(broker_id)

    def leader(self, topic: str, partition: int, *, timeout: float = 30) -> int:
        """The broker id the cluster's metadata names as leader of that partition.

        Right after a kill the metadata still names the dead broker until the controller fences it
        (broker.session.timeout.ms = 4 s here); use `wait_for_leader_change` to wait for the new one.
        """
        leader, _ = self._partition(topic, partition, timeout)
        return leader

    def isr(self, topic: str, partition: int, *, timeout: float = 30) -> list[int]:
        """The in-sync replicas of that partition, as the cluster's metadata has them."""
        _, isr = self._partition(topic, partition, timeout)
        return isr

    def wait_for_leader_change(self, topic: str, partition: int, old: int, *, timeout: float = 30) -> int:
        """Poll until a broker other than `old` leads the partition; return it."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.leader(topic, partition, timeout=max(1.0, deadline - time.monotonic()))
            if leader != old:
                return leader
            if time.monotonic() >= deadline:
                raise ClusterError(f"partition {topic}-{partition}: broker {old} still leads after {timeout:.0f} s")
            time.sleep(0.2)

    def wait_for_isr(self, topic: str, partition: int, size: int, *, timeout: float = 60) -> list[int]:
        """Poll until the partition has `size` in-sync replicas (a restarted broker has caught up)."""
        deadline = time.monotonic() + timeout
        while True:
            isr = self.isr(topic, partition, timeout=max(1.0, deadline - time.monotonic()))
            if len(isr) >= size:
                return isr
            if time.monotonic() >= deadline:
                raise ClusterError(f"partition {topic}-{partition}: in-sync replicas {isr} after {timeout:.0f} s")
            time.sleep(0.2)

    def sasl_config(self) -> dict[str, str]:
        """librdkafka options for the SASL_SSL listener (add `bootstrap.servers`: `self.sasl_bootstrap`).

        The dict holds the password: never print or log it.
        """
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": str(self.ca_location),
        }

    def log_files(self) -> list[Path]:
        """Every log the script and the brokers wrote (start-up, format, TLS, broker logs of every start)."""
        return sorted(path for path in self.dir.rglob("*.log") if path.is_file())

    def log_tails(self, lines: int = 40) -> str:
        """The end of each broker's current log, for a failure message."""
        parts = []
        for broker_id in self.broker_ids:
            path = self.dir / f"broker-{broker_id}" / "kafka.log"
            try:
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            except OSError as error:
                tail = f"(no log: {error})"
            parts.append(f"---- last lines of {path} (broker {broker_id}) ----\n{tail}")
        return "\n".join(parts)

    def _check(self, broker_id: int) -> None:
        if broker_id not in self.broker_ids:
            raise ValueError(f"broker_id: {broker_id!r} is not a broker of this cluster {self.broker_ids}")

    def _partition(self, topic: str, partition: int, timeout: float) -> tuple[int, list[int]]:
        """(leader, isr) from a fresh metadata request; waits (bounded) while the partition has no leader."""
        # log_level 0: refused connections to a killed broker are the point of these tests, not news.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            try:
                # All topics: asking for one topic by name could auto-create it.
                metadata = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            except Exception as error:  # an election in progress: retried until the deadline
                problem = str(error)
                time.sleep(0.2)
                continue
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                problem = f"topic {topic!r}: {found.error if found is not None else 'not in the metadata'}"
            elif partition not in found.partitions:
                raise ValueError(f"partition: topic {topic!r} has no partition {partition!r}")
            elif found.partitions[partition].leader >= 0:
                state = found.partitions[partition]
                return int(state.leader), sorted(int(broker) for broker in state.isrs)
            else:
                problem = f"partition {topic}-{partition} has no leader"
            time.sleep(0.2)
        raise ClusterError(f"leader of {topic}-{partition}: {problem} (after {timeout:.0f} s)")
