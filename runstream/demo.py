"""`runstream demo`: a small simulated fleet, streamed through the real pipeline, then compared in SQL.

Each simulated run has its own learning rate and batch size; its loss falls and its accuracy
rises at a rate set by them (with seeded noise), and its GPUs report synthetic samples.
Events go to the spool (the default) or to Kafka (`--kafka`), are loaded into ClickHouse,
and the comparison table is read back with SQL; then the project's leaderboard and the path of an
offline HTML report (runstream.analysis) are printed.
"""

from __future__ import annotations

import itertools
import math
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runstream.analysis.lineage import lineage, render_tree
from runstream.analysis.queries import leaderboard
from runstream.analysis.report import write_report
from runstream.comparison import compare_project
from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings, ingest_spool
from runstream.consumer.dsn import redact
from runstream.output import render
from runstream.producer.kafka_settings import KafkaSettings
from runstream.producer.run import Run, producer_stats
from runstream.producer.settings import ProducerSettings
from runstream.progress import bar
from runstream.server.settings import DEFAULT_PORT

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
BATCH_SIZES = (32, 64, 128)
GPUS_PER_RUN = 2
SIMULATED_STEP_S = 0.5
GPU_SAMPLE_EVERY_S = 5.0
#: Every this many steps a simulated run logs a histogram of its gradient norms (Run.log_histogram).
HISTOGRAM_EVERY = 10
CONSUME_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SimulatedRun:
    name: str
    lr: float
    batch_size: int
    seed: int


def fleet(runs: int) -> list[SimulatedRun]:
    """Runs that cover every learning rate before repeating one with another batch size."""
    combos = itertools.islice(itertools.cycle(itertools.product(BATCH_SIZES, LEARNING_RATES)), runs)
    return [SimulatedRun(f"lr{lr:g}-bs{bs}-{i}", lr, bs, seed=i) for i, (bs, lr) in enumerate(combos)]


def _curve(sim: SimulatedRun, step: int, steps: int, noise: random.Random) -> tuple[float, float]:
    """Loss and accuracy at a step: the best lr is near 1e-3; large batches converge a little slower."""
    quality = math.exp(-((math.log10(sim.lr) + 3.0) ** 2)) * (1.0 - 0.05 * math.log2(sim.batch_size / 32))
    progress = 1.0 - math.exp(-5.0 * quality * (step + 1) / steps)
    loss = 2.5 * (1.0 - progress) + 0.1 + noise.gauss(0, 0.01)
    acc = 0.1 + 0.85 * progress * quality + noise.gauss(0, 0.005)
    return loss, min(max(acc, 0.0), 1.0)


def simulate_run(sim: SimulatedRun, project: str, steps: int, settings: ProducerSettings) -> tuple[str, int]:
    """Log one run through the SDK; return its run id and the number of metric points logged."""
    noise = random.Random(sim.seed)  # noqa: S311 - simulation noise, not security
    params = {"lr": sim.lr, "batch_size": sim.batch_size, "optimizer": {"name": "adamw", "weight_decay": 0.01}}
    # grouped by batch size, so the group aggregates (runstream curve --group bs32) have runs to average
    run = Run(project=project, name=sim.name, params=params, tags={"demo": "true"}, settings=settings,
              group=f"bs{sim.batch_size}", job_type="train", sweep="demo-lr-bs")
    start_us = time.time_ns() // 1000
    points = 0
    next_sample_s = 0.0
    grads = random.Random(sim.seed + 7)  # noqa: S311 - its own stream: the curves stay as they were
    for step in range(steps):
        loss, acc = _curve(sim, step, steps, noise)
        run.log({"loss": loss, "acc": acc}, step=step)
        points += 2
        if step % HISTOGRAM_EVERY == 0:  # gradient norms: their spread shrinks with the loss
            run.log_histogram("grad/norm", [abs(grads.gauss(0.0, loss)) for _ in range(256)], step=step, bins=32)
        simulated_s = step * SIMULATED_STEP_S
        if simulated_s >= next_sample_s:
            run.log_gpu_samples(_gpu_samples(sim, start_us + int(simulated_s * 1e6), noise), host="demo-node-1")
            next_sample_s += GPU_SAMPLE_EVERY_S
    run.log_gpu_samples(
        _gpu_samples(sim, start_us + int(steps * SIMULATED_STEP_S * 1e6), noise), host="demo-node-1"
    )
    run.finish("ok")
    return run.run_id, points


def simulate_lifecycle(best: SimulatedRun, project: str, steps: int, settings: ProducerSettings
                       ) -> tuple[list[str], int, str]:
    """A preempted run resumed from its checkpoint, and a fork of it: the run lifecycle on demo data.

    Attempt 1 of `<best>-preempted` is stopped at 70% of the steps (ended `killed`, as a preemption's
    SIGTERM ends it); attempt 2 resumes from the checkpoint at 50% and logs those steps again with other
    noise, so every view shows attempt 2's values there while `runstream curve --attempts` still has
    attempt 1's. `<best>-finetune` forks it at 75% with a tenth of the learning rate. Returns the run ids,
    the points logged and a line saying what happened."""
    preempted = SimulatedRun(f"{best.name}-preempted", best.lr, best.batch_size, seed=1000 + best.seed)
    params = {"lr": best.lr, "batch_size": best.batch_size}
    group = f"bs{best.batch_size}"
    crash_at, checkpoint, fork_step = (steps * 7) // 10, steps // 2, (steps * 3) // 4
    first = Run(project=project, name=preempted.name, params=params, settings=settings, group=group,
                job_type="train", sweep="demo-lr-bs")
    noise = random.Random(preempted.seed)  # noqa: S311 - simulation noise, not security
    for step in range(crash_at):
        loss, acc = _curve(preempted, step, steps, noise)
        first.log({"loss": loss, "acc": acc}, step=step)
    first.finish("killed", error="preempted (simulated SIGTERM)")
    second = Run(project=project, settings=settings, resume=first.run_id)  # name, labels: kept from attempt 1
    noise = random.Random(preempted.seed + 1)  # noqa: S311
    for step in range(checkpoint, steps):
        loss, acc = _curve(preempted, step, steps, noise)
        second.log({"loss": loss, "acc": acc}, step=step)
    second.finish("ok")
    finetune = SimulatedRun(f"{best.name}-finetune", best.lr / 10, best.batch_size, seed=2000 + best.seed)
    fork = Run(project=project, name=finetune.name, params={**params, "lr": finetune.lr}, settings=settings,
               fork_from=first.run_id, fork_step=fork_step, group=group, job_type="train", sweep="demo-lr-bs")
    noise = random.Random(finetune.seed)  # noqa: S311
    for step in range(fork_step + 1, steps):
        loss, acc = _curve(best, step, steps, noise)
        fork.log({"loss": loss * 0.9, "acc": min(1.0, acc * 1.02)}, step=step)
    fork.finish("ok")
    points = 2 * (crash_at + (steps - checkpoint) + (steps - fork_step - 1))
    summary = (f"{preempted.name}: attempt 1 ended killed at step {crash_at - 1}, attempt 2 resumed from the "
               f"checkpoint at step {checkpoint}; {finetune.name} forks it at step {fork_step}.")
    return [first.run_id, fork.run_id], points, summary


def _gpu_samples(sim: SimulatedRun, time_us: int, noise: random.Random) -> list[dict[str, object]]:
    return [
        {
            "time_us": time_us,
            "gpu_index": gpu,
            "gpu_uuid": f"GPU-demo-{sim.seed}-{gpu}",
            "gpu_model": "NVIDIA H100 80GB HBM3",
            "utilization_pct": min(100.0, 60.0 + sim.batch_size / 4 + noise.uniform(-5, 5)),
            "memory_used_bytes": int(sim.batch_size * 300e6),
            "memory_total_bytes": 80 * 1024**3,
            "power_w": 350.0 + noise.uniform(-30, 30),
            "temperature_c": 60.0 + noise.uniform(-3, 3),
            "sm_clock_mhz": 1980,
            "memory_clock_mhz": 2619,
        }
        for gpu in range(GPUS_PER_RUN)
    ]


def run_demo(
    *,
    runs: int,
    steps: int,
    kafka: str | None,
    clickhouse: str,
    project: str,
    spool: Path | None,
    topic_prefix: str,
    out: Callable[[str], None] = print,
    report_out: Path | None = None,
    progress: bool | None = None,
) -> int:
    """Simulate, load and compare; end with the leaderboard and an HTML report (`report_out`, default
    next to the spool folder: runstream-report-PROJECT.html). `progress`: runs logged and spool bytes
    ingested on stderr (None: when stderr is a terminal, see runstream.progress)."""
    if runs < 1 or steps < 1:
        raise ValueError(f"--runs and --steps must be at least 1 (got runs={runs}, steps={steps})")
    started = time.monotonic()
    spool_dir = spool or Path(tempfile.mkdtemp(prefix="runstream-demo-spool-"))
    # The demo simulates its GPUs, so the real sampler stays off.
    # A secured Kafka: the same RUNSTREAM_KAFKA_* options (and RUNSTREAM_CONFIG file) as every other client.
    resolved = KafkaSettings.resolve(kafka) if kafka else None
    kafka_options = resolved.options if resolved is not None else ()
    settings = ProducerSettings(kafka=kafka, kafka_options=kafka_options, spool=spool_dir, topic_prefix=topic_prefix,
                                sample_interval_s=0)
    where = f"Kafka at {kafka}" if kafka else f"the spool {spool_dir}"
    out(f"Simulating {runs} runs x {steps} steps of project {project!r} into {where} ...")
    sent_before = producer_stats()["sent_events"]
    points = 0
    run_ids = []
    with bar("  runs logged", runs, unit="run", show=progress) as logged_runs:
        for sim in fleet(runs):
            run_id, logged = simulate_run(sim, project, steps, settings)
            run_ids.append(run_id)
            points += logged
            logged_runs.update(1)
    sims = fleet(runs)
    best = max(sims, key=lambda sim: _curve(sim, steps - 1, steps, random.Random(0))[1])  # noqa: S311
    lifecycle_ids, logged, lifecycle = simulate_lifecycle(best, project, steps, settings)
    run_ids.extend(lifecycle_ids)
    points += logged
    events = producer_stats()["sent_events"] - sent_before
    sink = ClickHouseSink(clickhouse)
    if kafka:
        out(f"Consuming {events} events ({points} metric points) from Kafka into ClickHouse ...")
        service = ConsumerService(
            ConsumerSettings(kafka=kafka, clickhouse=clickhouse, topic_prefix=topic_prefix,
                             group_id=f"runstream-demo-{project}", kafka_options=kafka_options),
            sink=sink,
        )
        stop = threading.Event()
        deadline = threading.Timer(CONSUME_TIMEOUT_S, stop.set)
        deadline.start()
        stats = service.run(stop, stop_when=lambda s: s.events + s.dead_letters >= events)
        deadline.cancel()
        if stats.events + stats.dead_letters < events:
            raise RuntimeError(
                f"only {stats.events} of {events} events arrived from Kafka within {CONSUME_TIMEOUT_S:.0f}s"
            )
        loaded_points = stats.points
    else:
        out(f"Ingesting {events} events ({points} metric points) from the spool into ClickHouse ...")
        report = ingest_spool(spool_dir, sink, progress=progress)
        loaded_points = report.points
    comparison = compare_project(sink.client, sink.database, project, run_ids=run_ids)
    out("")
    out(render(comparison.columns, comparison.rows))
    board = leaderboard(sink.client, sink.database, project, "acc", "max")
    out("")
    out(f"Leaderboard of project {project!r} by best acc (ties: earlier step first):")
    out(render(board.columns[:1] + board.columns[2:], [row[:1] + row[2:] for row in board.rows]))
    report_path = write_report(sink.client, sink.database, project,
                               report_out or spool_dir.parent / f"runstream-report-{project}.html")
    out("")
    out(f"Run lifecycle: {lifecycle}")
    out(render_tree(lineage(sink.client, sink.database, lifecycle_ids[0])))
    out("")
    out(f"{loaded_points} metric points stored; {time.monotonic() - started:.1f}s in all.")
    out(f"HTML report (opens offline): {report_path.resolve()}")
    shown = redact(clickhouse)  # credentials come from RUNSTREAM_CLICKHOUSE_USER/_PASSWORD, never printed
    out(f'Explore with: runstream query "SELECT * FROM runs" --clickhouse {shown}')  # noqa: S608
    out(f"          or: runstream runs --project {project} --where 'params.lr < 0.001' --sort -metrics.acc "
        f"--clickhouse {shown}")
    out(f"          or: runstream curve {lifecycle_ids[0]} --attempts --metric acc --clickhouse {shown}")
    out(f"Browse them: runstream server --clickhouse {shown} --spool {spool_dir}")
    out(f"         then open http://127.0.0.1:{DEFAULT_PORT}/ (runs table, live curves, compare, GPU, drift)")
    sink.close()
    return 0
