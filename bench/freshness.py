"""Freshness: the time from `run.log()` to a queryable row, through a real broker into ClickHouse (chDB),
set against what each setting costs the consumer; the figures behind the SDK's default flush interval.

    .venv/bin/python bench/freshness.py              # the sweep (12 cases), about 5 minutes on 2 cores
    .venv/bin/python bench/freshness.py --repeat 2   # twice, pooled: what bench/results/freshness.md shows
    .venv/bin/python bench/freshness.py --quick      # 3 cases, about a minute

For each case (the SDK's `flush_interval_s` and `max_points_per_event`, the consumer's
`batch_max_wait_s`) the script

- starts a consumer (`ConsumerService`) in a thread of this process, on fresh topics and a fresh chDB
  database, and waits until it owns its partitions;
- starts a training-like producer process: `--runs` runs through the SDK (`Run`, Kafka sink), each
  logging `--metrics` scalars per step at `--steps-per-s`, for `--duration` seconds; it records the
  wall time of every `log()` call;
- after every insert, in the consumer's own thread (chDB opens its folder in one process only, and
  its client is not shared between threads), asks the table which steps of each run are there
  (`max(step)` and `uniqExact(step)` per run: a run's steps arrive in order, so every step up to a
  gap-free maximum is queryable); the first time a step is seen, minus its `log()` time, is its
  freshness;
- counts: every logged step must get a freshness figure, and `metric_points` must hold
  runs x steps x metrics rows, with and without FINAL.

The consumer's cost per message is the CPU time of this process (the consumer, its librdkafka
threads, chDB's inserts and merges) while the case ran, less the visibility queries and less what
the idle consumer burns (measured for `IDLE_S` before the producer starts), divided by the
messages consumed. That cost is measured at the bench's own message rate, so batches are smaller than
a busy consumer's: it overstates the per-message cost of a loaded process, if anything.

Because a bench-sized consumer writes small batches, the cost is also fitted over every case as
a * batches + b * messages + c * points (`fit_costs`), and the fleet columns price each case with it:
`--fleet-gpus` GPUs, each a process logging `--fleet-metrics` scalars at `--fleet-steps-per-s` (every
GPU its own run: the most messages; `--gpus-per-run 8` for one tracked run per node), the messages/s
the consumers must absorb, and consumer processes of one core each, every one writing a batch per
batch wait.

The last lines apply the rule the defaults are chosen by: the largest consumer batch wait (fewest
inserts), then the largest flush interval (fewest messages), whose p99 stays under P99_TARGET_S.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KAFKA = REPO / "deploy" / "local" / "kafka.sh"
#: Seconds the consumer idles, after joining and before the producer starts, to measure its idle CPU.
IDLE_S = 1.5
#: Seconds past the producer's end within which every logged step must be queryable.
TAIL_S = 30.0
#: Freshness under this many seconds at p99 is the rule the defaults are chosen by.
P99_TARGET_S = 2.0


@dataclass(frozen=True)
class Case:
    """One point of the sweep."""

    flush_interval_s: float
    batch_max_wait_s: float
    max_points_per_event: int = 50_000

    @property
    def label(self) -> str:
        return (f"flush {self.flush_interval_s:g}s, max {self.max_points_per_event:,} pts/event, "
                f"wait {self.batch_max_wait_s:g}s")


QUICK: tuple[Case, ...] = (Case(0.2, 1.0), Case(1.0, 1.0), Case(1.0, 0.25))
SWEEP: tuple[Case, ...] = (
    *(Case(interval, 1.0) for interval in (0.05, 0.1, 0.2, 0.5, 1.0)),
    *(Case(interval, wait) for wait in (0.25, 0.5) for interval in (0.2, 0.5, 1.0)),
    Case(1.0, 0.5, max_points_per_event=50),
)


@dataclass
class Result:
    """What one case measured (repeats pooled); `fleet` scales it to the fleet."""

    case: Case
    runs: int
    steps: int
    metrics: int
    steps_logged: int = 0
    freshness_figures: int = 0
    rows_stored: int = 0
    rows_stored_final: int = 0
    messages: int = 0
    batches: int = 0
    points: int = 0
    window_s: float = 0.0
    cpu_s: float = 0.0
    idle_cpu_per_s: float = 0.0
    query_cpu_s: float = 0.0
    p50_s: float = math.nan
    p90_s: float = math.nan
    p99_s: float = math.nan
    max_s: float = math.nan
    dropped: int = 0
    fleet: dict[str, float] = field(default_factory=dict)
    freshness: list[float] = field(default_factory=list, repr=False)  # seconds, one per logged step

    def summarise(self) -> None:
        self.freshness_figures = len(self.freshness)
        self.p50_s, self.p90_s = _quantile(self.freshness, 0.5), _quantile(self.freshness, 0.9)
        self.p99_s, self.max_s = _quantile(self.freshness, 0.99), max(self.freshness, default=math.nan)

    def absorb(self, other: Result) -> None:
        """Pool a repeat of the same case: its steps join this one's quantiles, its counts add up."""
        for name in ("runs", "steps_logged", "rows_stored", "rows_stored_final", "messages", "batches", "points",
                     "dropped"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("window_s", "cpu_s", "query_cpu_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        idle = self.idle_cpu_per_s * (self.window_s - other.window_s) + other.idle_cpu_per_s * other.window_s
        self.idle_cpu_per_s = idle / self.window_s if self.window_s else 0.0
        self.freshness.extend(other.freshness)
        self.summarise()

    @property
    def busy_cpu_s(self) -> float:
        """The consumer's marginal CPU: the case's CPU less the idle rate and the bench's own queries."""
        return max(self.cpu_s - self.query_cpu_s - self.idle_cpu_per_s * self.window_s, 0.0)

    @property
    def cost_us_per_message(self) -> float:
        """Marginal consumer CPU per message at the bench's own rate (its batches are small)."""
        return self.busy_cpu_s / max(self.messages, 1) * 1e6


@dataclass(frozen=True)
class CostModel:
    """Consumer CPU, in µs, per batch written, per message and per metric point: fitted (least squares,
    no negative term) to every case of the sweep, so that a fleet's cost can be priced at its own
    batch size rather than the bench's."""

    per_batch_us: float
    per_message_us: float
    per_point_us: float

    def message_us(self, points_per_message: float) -> float:
        return self.per_message_us + self.per_point_us * points_per_message


def fit_costs(results: Sequence[Result]) -> CostModel:
    """The best non-negative fit of busy CPU = a * batches + b * messages + c * points over the cases."""
    import numpy as np

    rows = np.array([[r.batches, r.messages, r.points] for r in results], dtype=float)
    cpu_us = np.array([r.busy_cpu_s * 1e6 for r in results])
    best: tuple[float, list[float]] | None = None
    for size in (3, 2, 1):
        for terms in itertools.combinations(range(3), size):
            if len(results) < size:
                continue
            solution = np.linalg.lstsq(rows[:, terms], cpu_us, rcond=None)[0]
            if (solution < 0).any():
                continue
            coefficients = [0.0, 0.0, 0.0]
            for term, value in zip(terms, solution.tolist(), strict=True):
                coefficients[term] = value
            residual = float(((rows @ np.array(coefficients) - cpu_us) ** 2).sum())
            if best is None or residual < best[0]:
                best = (residual, coefficients)
    if best is None:
        return CostModel(0.0, 0.0, 0.0)
    return CostModel(*best[1])


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# -- the producer process ------------------------------------------------------------------------


def produce(spec: dict[str, Any]) -> None:
    """The training-like process: `runs` runs logging at a steady rate; writes log() times to `out`."""
    from runstream.producer import ProducerSettings, Run
    from runstream.producer.run import producer_stats

    settings = ProducerSettings(
        kafka=spec["kafka"], topic_prefix=spec["prefix"], flush_interval_s=spec["flush_interval_s"],
        max_points_per_event=spec["max_points_per_event"], sample_interval_s=0.0,
    )
    runs = [Run(project="freshness", name=f"r{i}", settings=settings) for i in range(spec["runs"])]
    names = [f"metric_{m}" for m in range(spec["metrics"])]
    period = 1.0 / spec["steps_per_s"]
    times: list[list[float]] = [[] for _ in runs]
    started = time.monotonic()
    for step in range(spec["steps"]):
        wait = started + step * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing: the training loop's own step time
        for i, run in enumerate(runs):
            values = {name: float(step + m) for m, name in enumerate(names)}
            times[i].append(time.time())
            run.log(values, step=step)
    for run in runs:
        run.finish()
    out = {"run_ids": [run.run_id for run in runs], "log_times": times, "stats": producer_stats()}
    Path(spec["out"]).write_text(json.dumps(out), encoding="utf-8")


# -- the consumer side ---------------------------------------------------------------------------


def _visibility_sink(dsn: str, runs: int) -> Any:
    """A ClickHouseSink that, after each write, notes which steps of each run have become queryable."""
    from runstream.consumer.clickhouse_sink import ClickHouseSink

    class VisibilitySink(ClickHouseSink):
        def __init__(self, dsn: str) -> None:
            super().__init__(dsn)
            self.runs = runs
            self.seen: dict[str, list[float]] = {}  # run id -> first time step i was queryable, by i
            self.query_cpu_s = 0.0

        def write(self, batch: Any, tables: Sequence[str] | None = None) -> None:
            super().write(batch, tables)
            now = time.time()  # the rows the query finds were there by now: the insert has returned
            cpu = _cpu_s()
            # Ask only for steps above what every run already showed (a run not seen yet: from step 0).
            low = min(len(steps) for steps in self.seen.values()) - 1 if len(self.seen) >= self.runs else -1
            rows = self.client.query(
                f"SELECT run_id, max(step), uniqExact(step) FROM {self.database}.metric_points "  # noqa: S608
                "WHERE step > {low:Int64} GROUP BY run_id", parameters={"low": low},
            ).result_rows
            for run_id, top, count in rows:
                steps = self.seen.setdefault(run_id, [])
                if count == top - low:  # no gap above `low`: every step up to `top` is there
                    steps.extend([now] * (top + 1 - len(steps)))
            self.query_cpu_s += _cpu_s() - cpu

    return VisibilitySink(dsn)


def run_case(case: Case, args: argparse.Namespace, bootstrap: str, chdb_path: Path, work: Path) -> Result:
    from runstream.consumer import ConsumerService, ConsumerSettings

    steps = max(1, round(args.duration * args.steps_per_s))
    result = Result(case=case, runs=args.runs, steps=steps, metrics=args.metrics)
    tag = uuid.uuid4().hex[:8]
    database = f"fresh_{tag}"
    prefix = f"fresh{tag}."
    sink = _visibility_sink(f"chdb://{chdb_path}?database={database}", args.runs)
    settings = ConsumerSettings(kafka=bootstrap, clickhouse=f"chdb://{chdb_path}?database={database}",
                                topic_prefix=prefix, group_id=f"fresh-{tag}", batch_max_wait_s=case.batch_max_wait_s,
                                partitions=args.partitions)
    service = ConsumerService(settings, sink=sink)
    assigned = _watch_assignment(service)
    stop = threading.Event()
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            service.run(stop)
        except BaseException as error:  # reported by the main thread
            failure.append(error)

    consumer = threading.Thread(target=consume, name="consumer", daemon=True)
    consumer.start()
    try:
        # Start the clock only once the consumer owns its partitions (the group join is not freshness).
        if not assigned.wait(60):
            raise TimeoutError("the consumer was not assigned any partition within 60 s")
        idle_cpu, idle_at = _cpu_s(), time.monotonic()
        time.sleep(IDLE_S)  # measuring the idle consumer's CPU, not waiting for a condition
        result.idle_cpu_per_s = (_cpu_s() - idle_cpu) / (time.monotonic() - idle_at)

        out = work / f"log-times-{tag}.json"
        spec = {"kafka": bootstrap, "prefix": prefix, "runs": args.runs, "metrics": args.metrics,
                "steps": steps, "steps_per_s": args.steps_per_s, "flush_interval_s": case.flush_interval_s,
                "max_points_per_event": case.max_points_per_event, "out": str(out)}
        cpu0, began, messages0 = _cpu_s(), time.monotonic(), service.stats.messages
        query0 = sink.query_cpu_s
        producer = subprocess.run([sys.executable, __file__, "_produce", json.dumps(spec)], check=False,
                                  timeout=args.duration + 120, capture_output=True, text=True)
        if producer.returncode != 0:
            raise RuntimeError(f"producer process exited {producer.returncode}:\n{producer.stderr[-3000:]}")
        logged = json.loads(out.read_text(encoding="utf-8"))
        result.dropped = int(logged["stats"].get("dropped_items", 0))
        deadline = time.monotonic() + TAIL_S
        while time.monotonic() < deadline and not failure:
            if all(len(sink.seen.get(run_id, ())) >= steps for run_id in logged["run_ids"]):
                break
            time.sleep(0.05)  # polling for the consumer to catch up, with a deadline
        result.window_s = time.monotonic() - began
        result.cpu_s = _cpu_s() - cpu0
        result.query_cpu_s = sink.query_cpu_s - query0
        result.messages = service.stats.messages - messages0
        result.batches, result.points = service.stats.batches, service.stats.points
    finally:
        stop.set()
        consumer.join(timeout=30)
    if failure:
        raise RuntimeError(f"consumer failed: {failure[0]!r}")
    for run_id, log_times in zip(logged["run_ids"], logged["log_times"], strict=True):
        seen = sink.seen.get(run_id, [])
        result.steps_logged += len(log_times)
        result.freshness.extend(v - t for v, t in zip(seen, log_times, strict=False))
    result.summarise()
    table = f"{database}.metric_points"
    result.rows_stored = int(sink.client.query(f"SELECT count() FROM {table}").result_rows[0][0])  # noqa: S608
    result.rows_stored_final = int(sink.client.query(f"SELECT count() FROM {table} FINAL").result_rows[0][0])  # noqa: S608
    sink.client.command(f"DROP DATABASE IF EXISTS {database}")  # no merges left running into the next case
    return result


def _watch_assignment(service: Any) -> threading.Event:
    """An event set once the consumer owns partitions, checked in the consumer's own thread after each
    poll (a librdkafka consumer is not to be called from a second thread while it polls)."""
    assigned = threading.Event()
    source = service.source
    consumer = getattr(source, "_consumer", None)
    if consumer is None:  # not a librdkafka source: count from the start
        assigned.set()
        return assigned
    poll = source.poll

    def watched_poll(max_messages: int, timeout: float) -> list[Any]:
        messages: list[Any] = poll(max_messages, timeout)
        if not assigned.is_set() and consumer.assignment():
            assigned.set()
        return messages

    source.poll = watched_poll  # this instance only
    return assigned


def fleet_figures(case: Case, model: CostModel, args: argparse.Namespace) -> dict[str, float]:
    """What a fleet of `fleet_gpus` GPUs sends at this case's settings, and the consumer processes it
    needs at the fitted costs: each process writes a batch every `batch_max_wait_s` (its batches do not
    fill at these rates) and must spend at most one core."""
    processes = args.fleet_gpus / args.gpus_per_run
    points_per_flush = args.fleet_metrics * args.fleet_steps_per_s * case.flush_interval_s
    messages_per_flush = max(1, math.ceil(points_per_flush / case.max_points_per_event))
    messages_per_s = processes * messages_per_flush / case.flush_interval_s
    points_per_message = points_per_flush / messages_per_flush
    message_us = model.message_us(points_per_message)
    cores = messages_per_s * message_us / 1e6
    batch_share = model.per_batch_us / case.batch_max_wait_s / 1e6  # of one core, per consumer process
    consumers = math.ceil(cores / (1 - batch_share)) if batch_share < 1 else math.inf
    return {"points_per_message": points_per_message, "messages_per_s": messages_per_s,
            "message_us": message_us, "consumer_cores": cores + consumers * batch_share,
            "consumer_processes": max(1, consumers)}


# -- output --------------------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    lines = [
        "| flush interval | max points/event | consumer batch wait | freshness p50 s | p99 s | max s "
        "| steps logged / with a figure | bench messages/batch | bench µs/message "
        "| fleet points/message | fleet messages/s | fleet µs/message (fit) | consumer processes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c, f = r.case, r.fleet
        lines.append(
            f"| {c.flush_interval_s:g} s | {c.max_points_per_event:,} | {c.batch_max_wait_s:g} s | {r.p50_s:.2f} "
            f"| {r.p99_s:.2f} | {r.max_s:.2f} | {r.steps_logged:,} / {r.freshness_figures:,} "
            f"| {r.messages / max(r.batches, 1):,.0f} | {r.cost_us_per_message:,.0f} "
            f"| {f['points_per_message']:,.0f} | {f['messages_per_s']:,.0f} | {f['message_us']:,.1f} "
            f"| {f['consumer_processes']:,.0f} |"
        )
    return "\n".join(lines)


def choose(results: Sequence[Result]) -> str:
    """The rule: the largest consumer wait (fewest inserts: a batch costs ~100 ms of CPU and a part in
    every table), then the largest flush interval (fewest messages), whose p99 freshness stays under
    P99_TARGET_S; only cases with the default event size. The wait goes first because a batch costs far
    more than the messages a shorter flush interval adds (fitted a vs b in `describe`)."""
    fitting = [r for r in results if r.case.max_points_per_event == 50_000 and r.p99_s < P99_TARGET_S]
    if not fitting:
        return f"no case kept p99 freshness under {P99_TARGET_S:g} s"
    best = max(fitting, key=lambda r: (r.case.batch_max_wait_s, r.case.flush_interval_s))
    return (f"Rule: the largest consumer batch wait, then the largest flush interval, whose p99 freshness "
            f"stays under {P99_TARGET_S:g} s. Chosen: flush_interval_s={best.case.flush_interval_s:g}, "
            f"batch_max_wait_s={best.case.batch_max_wait_s:g} (p50 {best.p50_s:.2f} s, p99 {best.p99_s:.2f} s; "
            f"{best.fleet['messages_per_s']:,.0f} messages/s and {best.fleet['consumer_processes']:,.0f} consumer "
            f"process(es) for the fleet).")


def describe(model: CostModel, results: Sequence[Result]) -> str:
    batches = sum(r.batches for r in results)
    return (f"Consumer cost fitted over {len(results)} case runs ({sum(r.messages for r in results):,} messages, "
            f"{batches:,} batches, busy CPU = a*batches + b*messages + c*points): a = {model.per_batch_us:,.0f} "
            f"µs per batch, b = {model.per_message_us:,.1f} µs per message, c = {model.per_point_us:,.2f} µs per "
            f"point.")


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_produce"]:
        produce(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 cases of 8 s (under 2 minutes)")
    parser.add_argument("--cases", default=None,
                        help="comma list of FLUSH:WAIT[:MAX_POINTS], e.g. 0.2:1.0,1.0:0.25:50 (default: the sweep)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the whole sweep this many times (rounds, so load swings hit every case alike) "
                             "and pool each case's steps")
    parser.add_argument("--runs", type=int, default=50, help="runs the producer process logs")
    parser.add_argument("--metrics", type=int, default=20, help="scalars per step")
    parser.add_argument("--steps-per-s", type=float, default=10.0, help="steps per second per run")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds each case logs for")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--fleet-gpus", type=int, default=1000)
    parser.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per logging process in the fleet")
    parser.add_argument("--fleet-metrics", type=int, default=20)
    parser.add_argument("--fleet-steps-per-s", type=float, default=10.0)
    parser.add_argument("--kafka", default=None, help="use this broker instead of starting one")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the printed report here")
    args = parser.parse_args(argv)
    if args.cases:
        cases: tuple[Case, ...] = tuple(_parse_case(text) for text in args.cases.split(","))
    elif args.quick:
        cases = QUICK
        args.duration = min(args.duration, 8.0)
    else:
        cases = SWEEP

    work = Path(tempfile.mkdtemp(prefix="runstream-freshness-"))
    bootstrap = args.kafka
    if bootstrap is None:
        bootstrap = subprocess.run(["bash", str(KAFKA), "start", "--dir", str(work / "kafka")], check=True,
                                   capture_output=True, text=True).stdout.strip().splitlines()[-1]
    header = [
        "# Freshness: log() to a queryable row, through the broker into chDB",
        "",
        f"`python bench/freshness.py{_shown(argv)}`",
        f"{args.runs} runs x {args.metrics} metrics at {args.steps_per_s:g} steps/s per run, {args.duration:g} s "
        f"per case, {args.partitions} partitions; fleet: {args.fleet_gpus:,} GPUs, {args.gpus_per_run} per "
        f"logging process, {args.fleet_metrics} metrics at {args.fleet_steps_per_s:g} steps/s; "
        f"{os.cpu_count()} CPUs, {_load()} at start",
        "",
    ]
    print("\n".join(header), flush=True)
    results: list[Result] = []  # one per case, repeats pooled
    measured: list[Result] = []  # every run of a case, for the cost fit
    try:
        for round_, (index, case) in itertools.product(range(args.repeat), enumerate(cases)):
            result = run_case(case, args, bootstrap, work / "ch", work)
            measured.append(dataclasses.replace(result, freshness=[]))
            if round_ == 0:
                results.append(result)
            else:
                results[index].absorb(result)
            print(f"{case.label}: p50 {result.p50_s:.2f} s, p99 {result.p99_s:.2f} s, "
                  f"{result.freshness_figures:,}/{result.steps_logged:,} steps with a figure, "
                  f"rows {result.rows_stored:,} (FINAL {result.rows_stored_final:,}) of "
                  f"{result.steps_logged * result.metrics:,}, {result.messages:,} messages in {result.batches} "
                  f"batches, {result.cost_us_per_message:,.0f} µs/message, {_load()}", flush=True)
    finally:
        if args.kafka is None:
            subprocess.run(["bash", str(KAFKA), "stop", "--dir", str(work / "kafka")], check=False,
                           capture_output=True)
    model = fit_costs(measured)
    for result in results:
        result.fleet = fleet_figures(result.case, model, args)
    body = [table(results), "", describe(model, measured), "", choose(results), "", f"{_load()} at end"]
    report = "\n".join([*header, *body, ""])
    print("\n" + "\n".join(body))
    if args.markdown:
        args.markdown.write_text(report, encoding="utf-8")
    if args.json:
        rows = [{**{k: v for k, v in asdict(r).items() if k != "freshness"},
                 "cost_us_per_message": r.cost_us_per_message} for r in results]
        args.json.write_text(json.dumps({"results": rows, "cost_model": asdict(model), "choice": choose(results)},
                                        indent=1), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)  # the broker's and chDB's folders
    complete = all(r.freshness_figures == r.steps_logged and r.rows_stored == r.rows_stored_final
                   == r.steps_logged * r.metrics for r in results)
    if not complete:
        print("INCOMPLETE: a logged step without a freshness figure, or stored rows != points logged")
    return 0 if complete else 1


def _shown(argv: Sequence[str]) -> str:
    """The command's options, less where its own output goes."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--json", "--markdown"):
            skip = True
        elif not arg.startswith(("--json=", "--markdown=")):
            shown.append(" " + arg)
    return "".join(shown)


def _parse_case(text: str) -> Case:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--cases: expected FLUSH:WAIT[:MAX_POINTS], got {text!r}")
    try:
        return Case(float(parts[0]), float(parts[1]), *(int(p) for p in parts[2:]))
    except ValueError:
        raise SystemExit(f"--cases: expected numbers in FLUSH:WAIT[:MAX_POINTS], got {text!r}") from None


if __name__ == "__main__":
    raise SystemExit(main())
