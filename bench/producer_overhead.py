"""Producer overhead: what `run.log()` costs a training loop, and how fast one process gets points out.

Every case runs the same loop: `log(dict_of_10_floats, step=i)` for i in 0..steps-1, values from a
seeded `random.Random`, the dicts built before the clock starts. It measures

1. overhead on the training thread: `time.perf_counter_ns()` around each log call, divided by the
   10 points the call carries; p50 and p99 per point, with the spool and with Kafka as the sink;
2. sustained throughput: points per second from the first log call until the tool's own
   finish/close returned (runstream's `run.finish()` flushes to the sink), and for runstream the
   producer's dropped-item counter (`producer_stats()["dropped_items"]`), which must stay 0. A
   second Kafka case runs a longer loop (--throughput-steps) without per-call clocks, as fast as
   it goes;
3. memory: a loop that logs --memory-steps steps (default 1,000,000) x 10 metrics offline as fast
   as it goes, each step's dict built in the loop as a training job does (no prebuilt dicts
   holding memory), and prints the process's peak RSS, the RSS before the loop, the peak of the
   SDK's queued-bytes estimate against its bound (`queue_capacity_bytes`) and the dropped count;
4. the same loop with MLflow (sqlite store, synchronous and `synchronous=False`), W&B (offline
   mode), Aim (local repo, `run.track(dict, step=i)`) and TensorBoard (`add_scalar` per metric,
   through torch.utils.tensorboard when torch is installed, else tensorboardX);
5. histograms: `run.log_histogram(name, values, step=i)` of 10,000 float32 values (binned in the SDK),
   µs per call on the training thread, p50 and p99 (default 64 bins, then bins="auto"), next to
   numpy.histogram alone on the same values; the spool must hold every histogram with every value.

Why: the SDK promises that logging never slows training down (goal: <= 1 µs per point at p50)
and that one process can feed the pipeline at >= 1,000,000 points/s; the other trackers, timed
the same way on the same machine, put those figures in context.

Each case runs in a fresh Python subprocess (this file with --child), so that one tool's imports,
threads and leftovers cannot skew another's figures, and a tool that is missing or crashes is
reported as "unavailable: <reason>" while the others go on. Runstream's figures are verified
after the clock stops: the spool files must hold every point, the broker every event sent.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
METRIC_NAMES = (
    "train/loss", "train/acc", "train/lr", "train/grad_norm", "train/tokens_per_s",
    "val/loss", "val/acc", "gpu/mem_frac", "gpu/util", "data/wait_ms",
)
POINTS_PER_STEP = len(METRIC_NAMES)
SEED = 20240611
DEFAULT_STEPS = 20_000
DEFAULT_THROUGHPUT_STEPS = 200_000  # long enough that finish()'s fixed cost (linger, acks) does not dominate
DEFAULT_MEMORY_STEPS = 1_000_000  # the case: 1,000,000 steps x 10 metrics reached 300 MB RSS
DEFAULT_HISTOGRAM_CALLS = 2_000
HISTOGRAM_VALUES = 10_000  # issue 14: the training-thread cost of a 10,000-value histogram
GOAL_P50_US = 1.0
GOAL_POINTS_PER_S = 1_000_000
TOOLS = ("runstream", "mlflow", "wandb", "aim", "tensorboard")


@dataclass(frozen=True)
class Case:
    """One row of the table: a tool, where it writes, and how many steps it runs by default."""

    key: str
    tool: str
    sink: str
    step_cap: int | None = None  # slow trackers run fewer steps unless --same-steps
    timed: bool = True  # False: no per-call clocks, throughput only, --throughput-steps steps
    needs_kafka: bool = False
    memory: bool = False  # the memory case: --memory-steps steps, dicts built in the loop, peak RSS
    histogram: bool = False  # the histogram case: --histogram-calls calls of log_histogram, µs per call


CASES = (
    Case("runstream-spool", "runstream", "spool (Avro files)"),
    Case("runstream-kafka", "runstream", "kafka", needs_kafka=True),
    Case("runstream-kafka-untimed", "runstream", "kafka, loop without per-call clocks", timed=False, needs_kafka=True),
    Case("runstream-memory", "runstream", "spool, full speed, dicts built in the loop", timed=False, memory=True),
    Case("runstream-histogram", "runstream", f"spool, log_histogram of {HISTOGRAM_VALUES:,} float32 values",
         histogram=True),
    Case("mlflow", "mlflow", "sqlite store", step_cap=1_000),
    Case("mlflow-async", "mlflow", "sqlite store, synchronous=False", step_cap=1_000),
    Case("wandb", "wandb", "offline run folder", step_cap=10_000),
    Case("aim", "aim", "local repo", step_cap=2_000),
    Case("tensorboard", "tensorboard", "event files", step_cap=5_000),
)
CASES_BY_KEY = {case.key: case for case in CASES}


@dataclass
class Result:
    """What a child reports for its case; `unavailable` set means no figure was measured."""

    steps: int = 0
    sink: str = ""
    setup_s: float = 0.0
    loop_s: float = 0.0
    elapsed_s: float = 0.0
    points_per_s: float = 0.0
    p50_us: float | None = None
    p99_us: float | None = None
    drops: int | None = None
    verified: bool | None = None  # runstream: the sink holds everything logged (checked after the clock)
    peak_rss_mb: float | None = None  # the memory case: the process's peak resident memory
    rss_before_mb: float | None = None  # ... and its resident memory just before the loop
    queue_peak_mb: float | None = None  # ... and the peak of the SDK's queued-bytes estimate
    queue_bound_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    unavailable: str | None = None


@dataclass
class Session:
    """An open tracker: `log(metrics, step=i)` per step, `close()` flushes; `verify()` runs after the clock."""

    log: Callable[..., object]
    close: Callable[[], object]
    sink: str | None = None
    verify: Callable[[Result], None] | None = None


def make_steps(steps: int) -> list[dict[str, float]]:
    """The metrics of every step, built before timing so the loop measures logging alone."""
    rng = random.Random(SEED)  # noqa: S311 - benchmark values, not secrets
    return [{name: rng.random() for name in METRIC_NAMES} for _ in range(steps)]


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile, so that p99 is a latency some call actually had."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def drive(session: Session, batches: list[dict[str, float]], timed: bool, result: Result) -> None:
    """The training loop under test; the clock runs from the first log call until close() returned."""
    log = session.log
    clock = time.perf_counter_ns
    durations = array("q", bytes(8 * len(batches)))
    start = clock()
    if timed:
        for step, metrics in enumerate(batches):
            before = clock()
            log(metrics, step=step)
            durations[step] = clock() - before
    else:
        for step, metrics in enumerate(batches):
            log(metrics, step=step)
    loop_ns = clock() - start
    session.close()
    elapsed_ns = clock() - start
    result.steps = len(batches)
    result.loop_s = loop_ns / 1e9
    result.elapsed_s = elapsed_ns / 1e9
    result.points_per_s = len(batches) * POINTS_PER_STEP / result.elapsed_s
    if timed:
        ordered = sorted(durations)
        result.p50_us = percentile(ordered, 0.50) / POINTS_PER_STEP / 1000
        result.p99_us = percentile(ordered, 0.99) / POINTS_PER_STEP / 1000


# -- the trackers, each opened in its own child process -------------------------------------------


def open_runstream_spool(workdir: Path, kafka: str | None) -> Session:
    import fastavro

    import runstream
    from runstream.producer.run import producer_stats

    spool = workdir / "spool"
    run = runstream.init(project="bench-producer-overhead", spool=str(spool))

    def verify(result: Result) -> None:
        result.drops = producer_stats()["dropped_items"]
        stored = 0
        for path in sorted((spool / run.run_id).glob("metric_steps.*.avro")):
            with open(path, "rb") as handle:
                records: Iterable[Any] = fastavro.reader(handle)
                stored += sum(len(record["steps"]) for record in records)
        result.verified = stored == result.steps * POINTS_PER_STEP
        result.notes.append(f"spool files hold {stored:,}/{result.steps * POINTS_PER_STEP:,} points")

    return Session(log=run.log, close=run.finish, verify=verify)


def open_runstream_kafka(workdir: Path, kafka: str | None) -> Session:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # defined in cimpl

    import runstream
    from runstream.producer.run import producer_stats
    from runstream.schemas import EVENT_TYPES, topic_for

    if not kafka:
        raise RuntimeError("no broker address")
    # Own topics, created before the clock starts, so that a shared broker's runstream topics
    # stay untouched and topic auto-creation is not part of the figure.
    prefix = f"bench-{uuid.uuid4().hex[:12]}."
    topics = [topic_for(prefix, event_type) for event_type in EVENT_TYPES]
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.list_topics(timeout=10)  # an unreachable broker fails here, with librdkafka's reason
    for topic, future in admin.create_topics([NewTopic(topic, 3, 1) for topic in topics]).items():
        try:
            future.result(timeout=30)
        except TimeoutError:
            raise RuntimeError(f"topic {topic!r} was not created on {kafka} within 30s") from None
    run = runstream.init(project="bench-producer-overhead", kafka=kafka, topic_prefix=prefix)

    def verify(result: Result) -> None:
        stats = producer_stats()
        result.drops = stats["dropped_items"]
        consumer = Consumer({"bootstrap.servers": kafka, "group.id": f"{prefix}verify", "enable.auto.commit": False})
        try:
            on_broker = 0
            metadata = consumer.list_topics(timeout=10)
            for topic in topics:
                for partition in metadata.topics[topic].partitions:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                    on_broker += high - low
        finally:
            consumer.close()
        result.verified = on_broker == stats["sent_events"]
        result.notes.append(f"broker holds {on_broker:,}/{stats['sent_events']:,} events sent")
        for future in admin.delete_topics(topics).values():
            future.result(timeout=30)

    return Session(log=run.log, close=run.finish, verify=verify)


def open_mlflow(workdir: Path, synchronous: bool) -> Session:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.start_run(run_name="bench-producer-overhead")
    log = mlflow.log_metrics if synchronous else functools.partial(mlflow.log_metrics, synchronous=False)
    return Session(log=log, close=mlflow.end_run)


def open_wandb(workdir: Path, kafka: str | None) -> Session:
    import wandb

    run = wandb.init(
        project="bench-producer-overhead",
        dir=str(workdir),
        mode="offline",
        settings=wandb.Settings(console="off", silent=True),
    )
    return Session(log=run.log, close=run.finish)


def open_aim(workdir: Path, kafka: str | None) -> Session:
    from aim.sdk.run import Run  # what `aim.Run` names

    run = Run(repo=str(workdir), experiment="bench-producer-overhead")
    return Session(log=run.track, close=run.close)


def open_tensorboard(workdir: Path, kafka: str | None) -> Session:
    writer: Any
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))
        backend = f"torch.utils.tensorboard {importlib.metadata.version('torch')}"
    except ImportError:
        from tensorboardX import SummaryWriter as XSummaryWriter

        writer = XSummaryWriter(str(workdir / "tb"))
        backend = f"tensorboardX {importlib.metadata.version('tensorboardX')} (torch not installed)"
    add_scalar = writer.add_scalar

    def log(metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            add_scalar(name, value, step)

    return Session(log=log, close=writer.close, sink=f"event files via {backend}")


OPENERS: dict[str, Callable[[Path, str | None], Session]] = {
    "runstream-spool": open_runstream_spool,
    "runstream-kafka": open_runstream_kafka,
    "runstream-kafka-untimed": open_runstream_kafka,
    "mlflow": lambda workdir, _kafka: open_mlflow(workdir, synchronous=True),
    "mlflow-async": lambda workdir, _kafka: open_mlflow(workdir, synchronous=False),
    "wandb": open_wandb,
    "aim": open_aim,
    "tensorboard": open_tensorboard,
}


def rss_mb() -> float:
    """This process's resident memory now, from /proc (0 where there is none)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_memory(steps: int, workdir: Path, result: Result) -> None:
    """Log `steps` steps of 10 fresh floats offline as fast as the loop goes; peak RSS and drops.

    The dicts are built in the loop (a prebuilt list of a million dicts would itself take ~600 MB),
    so what stays resident beyond the interpreter is what the SDK holds.
    """
    import resource

    import runstream
    from runstream.producer.run import producer_stats

    spool = workdir / "spool"
    run = runstream.init(project="bench-producer-memory", spool=str(spool), sample_interval=0)
    rnd = random.Random(SEED).random
    names = METRIC_NAMES
    log = run.log
    result.rss_before_mb = rss_mb()
    queue_peak = 0
    start = time.perf_counter_ns()
    for step in range(steps):
        log({name: rnd() for name in names}, step=step)
        if step % 5_000 == 0:
            queue_peak = max(queue_peak, producer_stats().get("queued_bytes", 0))
    loop_ns = time.perf_counter_ns() - start
    run.finish()
    elapsed_ns = time.perf_counter_ns() - start
    result.steps = steps
    result.loop_s, result.elapsed_s = loop_ns / 1e9, elapsed_ns / 1e9
    result.points_per_s = steps * POINTS_PER_STEP / result.elapsed_s
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result.queue_peak_mb = queue_peak / 2**20
    result.queue_bound_mb = getattr(run.settings, "queue_capacity_bytes", 0) / 2**20  # 0: an SDK without it
    stats = producer_stats()
    result.drops = stats["dropped_items"]
    stored = 0
    for path in sorted((spool / run.run_id).glob("metric_steps.*.avro")):
        with open(path, "rb") as handle:
            stored += sum(len(record["steps"]) for record in fastavro_reader(handle))
    logged = steps * POINTS_PER_STEP
    dropped_points = result.drops * POINTS_PER_STEP
    result.verified = stored + dropped_points == logged
    result.notes.append(f"spool files hold {stored:,} points, dropped {dropped_points:,}, logged {logged:,}")


def run_histograms(calls: int, workdir: Path, result: Result) -> None:
    """`calls` x `run.log_histogram(name, values, step=i)` of HISTOGRAM_VALUES float32 values (a
    gradient tensor's worth, 3 of them NaN): µs per call on the training thread, p50 and p99, with the
    default 64 bins, then with bins="auto"; numpy.histogram alone on the same values for context.
    Verified after the clock: the spool holds every histogram, each with every value counted."""
    import numpy as np

    import runstream

    spool = workdir / "spool"
    run = runstream.init(project="bench-producer-histograms", spool=str(spool), sample_interval=0)
    rng = np.random.default_rng(SEED)
    values = [rng.lognormal(-3, 1, HISTOGRAM_VALUES).astype(np.float32) for _ in range(8)]
    for tensor in values:
        tensor[:3] = np.nan
    clock = time.perf_counter_ns

    def timed(call: Callable[[int], object], count: int) -> list[int]:
        durations = []
        for i in range(count):
            before = clock()
            call(i)
            durations.append(clock() - before)
        return sorted(durations)

    start = clock()
    default = timed(lambda i: run.log_histogram("grad/norm", values[i % 8], step=i), calls)
    result.loop_s = (clock() - start) / 1e9
    auto = timed(lambda i: run.log_histogram("grad/auto", values[i % 8], step=i, bins="auto"), max(1, calls // 4))
    bare = timed(lambda i: np.histogram(values[i % 8][np.isfinite(values[i % 8])], bins=64), max(1, calls // 4))
    run.finish()
    result.elapsed_s = (clock() - start) / 1e9
    result.steps = calls
    result.p50_us, result.p99_us = percentile(default, 0.5) / 1000, percentile(default, 0.99) / 1000
    result.points_per_s = calls / result.loop_s  # here: histograms per second
    result.notes.append(f'bins="auto": p50 {percentile(auto, 0.5) / 1000:.0f} µs per call')
    result.notes.append(f"numpy.histogram alone (64 bins): p50 {percentile(bare, 0.5) / 1000:.0f} µs")
    stored = complete = 0
    for path in sorted((spool / run.run_id).glob("metric_histogram.*.avro")):
        with open(path, "rb") as handle:
            for record in fastavro_reader(handle):
                stored += 1
                complete += sum(record["counts"]) + record["nan_count"] == HISTOGRAM_VALUES
    logged = calls + max(1, calls // 4)
    result.verified = stored == complete == logged
    result.notes.append(f"spool files hold {stored:,}/{logged:,} histograms, {complete:,} with every value counted")


def fastavro_reader(handle: Any) -> Iterable[Any]:
    import fastavro

    reader: Iterable[Any] = fastavro.reader(handle)
    return reader


def run_child(key: str, steps: int, workdir: Path, kafka: str | None, result_path: Path) -> None:
    """Measure one case in this process and write its Result as JSON."""
    case = CASES_BY_KEY[key]
    result = Result(steps=steps, sink=case.sink)
    if case.memory or case.histogram:
        try:
            (run_memory if case.memory else run_histograms)(steps, workdir, result)
        except Exception as error:
            result.unavailable = (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[0][:300]
        result_path.write_text(json.dumps(result.__dict__))
        return
    batches = make_steps(steps)
    try:
        started = time.perf_counter()
        session = OPENERS[key](workdir, kafka)
        result.setup_s = time.perf_counter() - started
        result.sink = session.sink or case.sink
        drive(session, batches, case.timed, result)
        if session.verify is not None:
            session.verify(result)
    except Exception as error:  # any failure makes the row "unavailable", never a made-up figure
        result.unavailable = (f"{type(error).__name__}: {error}".strip().splitlines() or ["?"])[0][:300]
    result_path.write_text(json.dumps(result.__dict__))


# -- the parent: broker, children, table ----------------------------------------------------------


class Broker:
    """A local broker from deploy/local/kafka.sh, stopped on exit unless it was already running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.address: str | None = None
        self.started_here = False

    def start(self) -> str:
        command = ["bash", str(KAFKA_SH)]
        if subprocess.run([*command, "status", "--dir", str(self.folder)], check=False).returncode == 0:
            print(f"kafka: reusing the broker already running in {self.folder} (left running)", flush=True)
        else:
            self.started_here = True
        begun = time.perf_counter()
        done = subprocess.run(
            [*command, "start", "--dir", str(self.folder)], capture_output=True, text=True, timeout=300, check=False
        )
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"kafka.sh start exited with {done.returncode}: {tail}")
        self.address = done.stdout.strip().splitlines()[-1]
        print(f"kafka: broker at {self.address} ({time.perf_counter() - begun:.1f}s to start)", flush=True)
        return self.address

    def stop(self) -> None:
        if self.started_here:
            subprocess.run(["bash", str(KAFKA_SH), "stop", "--dir", str(self.folder)], check=False)
            self.started_here = False
            print(f"kafka: broker in {self.folder} stopped", flush=True)


def child_env(workdir: Path) -> dict[str, str]:
    """The children's environment: no RUNSTREAM_* override, trackers offline and writing under workdir."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RUNSTREAM_")}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(workdir),
        WANDB_CONFIG_DIR=str(workdir / "wandb-config"),
        WANDB_CACHE_DIR=str(workdir / "wandb-cache"),
        WANDB_DATA_DIR=str(workdir / "wandb-data"),
    )
    return env


def measure(case: Case, steps: int, kafka: str | None, timeout_s: float) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.key}-") as folder:
        workdir = Path(folder)
        result_path = workdir / "result.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--child", case.key,
            "--steps", str(steps), "--workdir", str(workdir), "--result", str(result_path),
        ]
        if kafka:
            command += ["--kafka", kafka]
        try:
            done = subprocess.run(
                command, env=child_env(workdir), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            return Result(steps=steps, sink=case.sink, unavailable=f"did not finish within {timeout_s:.0f}s")
        if done.returncode != 0 or not result_path.exists():
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            return Result(steps=steps, sink=case.sink, unavailable=f"child exited with {done.returncode}: {lines[-1]}")
        data = json.loads(result_path.read_text())
        return Result(**data)


def timer_floor_ns() -> int:
    """p50 of an empty perf_counter_ns interval: the part of each per-call figure that is the clock."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(10_000):
        before = clock()
        samples.append(clock() - before)
    samples.sort()
    return percentile(samples, 0.5)


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_state() -> str:
    """The commit measured, and whether the SDK's sources differ from it (figures move with the code)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "producer", "schemas", "runstream"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (f", {len(changed)} uncommitted change(s) in the SDK's sources" if changed else "")


def print_environment() -> None:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}")
    print(f"load average at start: {load}; runstream: {source_state()}")
    names = ("runstream", "confluent-kafka", "fastavro", "mlflow", "wandb", "aim", "tensorboardX", "torch", "crc32c")
    print("packages: " + ", ".join(f"{name} {package_version(name)}" for name in names))
    print(f"timer floor: {timer_floor_ns()} ns per perf_counter_ns pair (inside every per-call figure)", flush=True)


def fmt_us(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def print_table(rows: list[tuple[Case, Result]]) -> None:
    print()
    print("| tool | sink | steps | p50 µs/point | p99 µs/point | points/s | drops |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, result in rows:
        if case.histogram:
            continue  # µs per call, not per point: its own line below
        if result.unavailable is not None:
            print(f"| {case.tool} | {result.sink} | {result.steps:,} | unavailable: {result.unavailable} | — | — | — |")
            continue
        drops = "n/a" if result.drops is None else f"{result.drops:,}"
        print(
            f"| {case.tool} | {result.sink} | {result.steps:,} | {fmt_us(result.p50_us)} | {fmt_us(result.p99_us)}"
            f" | {result.points_per_s:,.0f} | {drops} |"
        )
    print()
    print(f"{POINTS_PER_STEP} points per step; points/s counts from the first log call until finish/close returned;")
    print("drops: runstream's dropped-item counter (the other trackers block instead of dropping: n/a).")
    print("loop mean: the loop's wall time per point; unlike p50 it includes the time the training thread")
    print("waited while the tool's own threads held the GIL.")
    for case, result in rows:
        if case.memory and result.unavailable is None:
            print(
                f"memory: {result.steps:,} steps x {POINTS_PER_STEP} metrics offline at full speed: peak RSS"
                f" {result.peak_rss_mb:.0f} MB ({result.rss_before_mb:.0f} MB before the loop); queue peak"
                f" {result.queue_peak_mb:.1f} MB of a {result.queue_bound_mb:.0f} MB bound; {result.drops:,} dropped"
                f" log() calls; {result.points_per_s:,.0f} points/s"
            )
    for case, result in rows:
        if case.histogram and result.unavailable is None:
            print(
                f"histogram: log_histogram of {HISTOGRAM_VALUES:,} float32 values (64 bins, 3 NaN) on the training"
                f" thread: p50 {result.p50_us:.0f} µs, p99 {result.p99_us:.0f} µs per call ({result.steps:,} calls);"
                f" {'; '.join(result.notes)}"
            )
    for case, result in rows:
        if result.unavailable is None and not case.histogram:
            details = [
                f"setup {result.setup_s:.2f}s",
                f"loop {result.loop_s:.2f}s + finish/close {result.elapsed_s - result.loop_s:.2f}s",
                f"loop mean {result.loop_s * 1e6 / (result.steps * POINTS_PER_STEP):.2f} µs/point",
                *result.notes,
            ]
            print(f"- {case.tool}, {result.sink}: " + "; ".join(details))


def print_goals(rows: list[tuple[Case, Result]]) -> None:
    measured = {case.key: result for case, result in rows if result.unavailable is None}
    print()
    for key in ("runstream-spool", "runstream-kafka"):
        result = measured.get(key)
        if result is not None and result.p50_us is not None:
            verdict = "met" if result.p50_us <= GOAL_P50_US else "NOT met"
            print(f"goal p50 <= {GOAL_P50_US:g} µs/point ({CASES_BY_KEY[key].sink}): {result.p50_us:.2f} µs, {verdict}")
    for key in ("runstream-kafka-untimed", "runstream-kafka"):
        result = measured.get(key)
        if result is not None:
            complete = result.drops == 0 and result.verified is True
            verdict = "met" if result.points_per_s >= GOAL_POINTS_PER_S and complete else "NOT met"
            print(
                f"goal >= {GOAL_POINTS_PER_S:,} points/s to Kafka with 0 drops ({CASES_BY_KEY[key].sink}):"
                f" {result.points_per_s:,.0f} points/s, {result.drops} drops,"
                f" {'all' if result.verified else 'NOT all'} events on the broker, {verdict}"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps of {POINTS_PER_STEP} scalars per case (default {DEFAULT_STEPS:,}); "
                             "slow trackers run fewer unless --same-steps")
    parser.add_argument("--throughput-steps", type=int, default=DEFAULT_THROUGHPUT_STEPS,
                        help=f"steps of the untimed Kafka throughput case (default {DEFAULT_THROUGHPUT_STEPS:,})")
    parser.add_argument("--memory-steps", type=int, default=DEFAULT_MEMORY_STEPS,
                        help=f"steps of the memory case (default {DEFAULT_MEMORY_STEPS:,})")
    parser.add_argument("--histogram-calls", type=int, default=DEFAULT_HISTOGRAM_CALLS,
                        help=f"log_histogram calls of the histogram case (default {DEFAULT_HISTOGRAM_CALLS:,})")
    parser.add_argument("--same-steps", action="store_true",
                        help="run every tracker for --steps steps (MLflow takes ~8 ms a step on a small machine)")
    parser.add_argument("--only", default=",".join(TOOLS), help=f"comma list of tools (default {','.join(TOOLS)})")
    kafka = parser.add_mutually_exclusive_group()
    kafka.add_argument("--kafka", metavar="HOST:PORT", help="use this broker instead of starting a local one")
    kafka.add_argument("--no-kafka", action="store_true", help="skip the Kafka cases")
    parser.add_argument("--kafka-dir", type=Path, default=Path("/tmp/bench-kafka"),  # noqa: S108 - the documented place
                        help="folder of the local broker started when --kafka is not given (default /tmp/bench-kafka)")
    parser.add_argument("--child-timeout", type=float, default=300.0, help="seconds one case may take (default 300)")
    parser.add_argument("--child", choices=sorted(CASES_BY_KEY), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for option in ("steps", "throughput_steps", "memory_steps", "histogram_calls"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')}: expected at least 1, got {getattr(args, option)}")
    tools = [tool.strip() for tool in args.only.split(",") if tool.strip()]
    unknown = [tool for tool in tools if tool not in TOOLS]
    if unknown or not tools:
        parser.error(f"--only: unknown tool(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(TOOLS)}")
    args.tools = tools
    return args


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`, which stops the broker


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.steps, args.workdir, args.kafka, args.result)
        return 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    print_environment()
    cases = [case for case in CASES if case.tool in args.tools and not (case.needs_kafka and args.no_kafka)]
    if args.no_kafka:
        print("kafka: skipped (--no-kafka)")
    broker = Broker(args.kafka_dir)
    kafka: str | None = args.kafka
    kafka_error: str | None = None
    rows: list[tuple[Case, Result]] = []
    try:
        if not kafka and any(case.needs_kafka for case in cases):
            try:
                kafka = broker.start()
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                kafka_error = f"no broker: {error}"
                print(f"kafka: {kafka_error}", flush=True)
        for case in cases:
            if case.memory:
                steps = args.memory_steps
            elif case.histogram:
                steps = args.histogram_calls
            elif not case.timed:
                steps = args.throughput_steps
            elif args.same_steps or case.step_cap is None:
                steps = args.steps
            else:
                steps = min(args.steps, case.step_cap)
            print(f"{case.key}: {steps:,} steps ...", end=" ", flush=True)
            if case.needs_kafka and kafka_error:
                result = Result(steps=steps, sink=case.sink, unavailable=kafka_error)
            else:
                result = measure(case, steps, kafka, args.child_timeout)
            rows.append((case, result))
            if result.unavailable is not None:
                print(f"unavailable: {result.unavailable}", flush=True)
            elif case.histogram:
                print(f"p50 {result.p50_us:.0f} µs per histogram", flush=True)
            else:
                latency = "" if result.p50_us is None else f", p50 {result.p50_us:.2f} µs/point"
                print(f"{result.points_per_s:,.0f} points/s{latency}", flush=True)
    finally:
        broker.stop()
    print_table(rows)
    print_goals(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
