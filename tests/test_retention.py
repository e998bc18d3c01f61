"""Per-project retention (`runstream retention`): raw rows of one project expire by TTL, every other row stays.

Runs are started through the SDK's spool and `ingest`, points and samples written as the consumer writes
them (the sink fills each raw row's project). The clock is not moved: points are dated 40 days in the past
(the TTL compares with the server's clock), a 30-day rule is set, and `OPTIMIZE ... FINAL` forces the
merges. Then: the expired project's old raw rows are gone (counts and sums, with and without FINAL), the
other project's are untouched, the rollups, run_summary, the run list and the leaderboard answer as
before, and a later refresh of an expired run keeps its summary (and still takes in a new point).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from metric_events import Point, write_points
from test_run_summary import MAPS, stored_summary

import runstream
from runstream.analysis import queries
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.batch import Batch
from runstream.consumer.migrations import migrate, set_sample_ttl
from runstream.consumer.retention import (
    MAX_RAW_DAYS,
    UNASSIGNED,
    clear_retention,
    parse_raw_days,
    raw_ttl_clause,
    set_retention,
    show_retention,
)
from runstream.schemas import Decoder, Encoder, bundled_catalogue

pytestmark = pytest.mark.integration

SECOND_US = 1_000_000
DAY_US = 86_400 * SECOND_US
RAW = ("metric_points", "gpu_samples", "host_samples")


def now_us() -> int:
    return time.time_ns() // 1000


def start(sink: ClickHouseSink, spool: Path, runs: dict[str, str]) -> dict[str, str]:
    """name -> run id, each run started in its project through the SDK's spool and `ingest`, with 3 steps
    logged now (they never expire in these tests)."""
    ids = {}
    for name, project in runs.items():
        run = runstream.init(project, name, params={"lr": 0.1}, spool=str(spool), sample_interval=0)
        for step in range(3):
            run.log({"sdk": step / 10}, step=step)
        run.finish("ok")
        ids[name] = run.run_id
    report = ingest_spool(spool, sink)
    assert not report.rejected, report.rejected
    return ids


def curve(run_id: str, steps: range, t0: int, offset: float) -> list[Point]:
    return [p for s in steps for p in ((run_id, "acc", s, 0.5 + offset + s / 1000, t0 + s * SECOND_US),
                                       (run_id, "loss", s, 2.0 - offset - s / 500, t0 + s * SECOND_US))]


def write_samples(sink: ClickHouseSink, run_id: str, times: list[int]) -> None:
    batch = Batch()
    for number, t in enumerate(times):
        batch.add("gpu_samples", sample_event(run_id, t, number), now_us=now_us())
    sink.write(batch)


def sample_event(run_id: str, t: int, number: int) -> dict[str, Any]:
    """A gpu_samples event of one GPU with host readings, as the SDK sends it."""
    return {
        "event_id": f"{run_id}-g{number}", "run_id": run_id, "timestamp_us": t, "host": "node-1",
        "samples": [{"time_us": t, "gpu_index": 0, "gpu_uuid": "GPU-0", "gpu_model": "H100",
                     "utilization_pct": 50.0 + number, "memory_used_bytes": 2**30, "memory_total_bytes": 2**36,
                     "power_w": 300.0, "temperature_c": 60.0, "sm_clock_mhz": 1500, "memory_clock_mhz": 2600,
                     "power_limit_w": 700.0, "throttle_reasons": 0, "process_memory_bytes": 2**29}],
        "host_cpu_pct": 10.0, "host_memory_used_bytes": 2**33, "host_memory_total_bytes": 2**36,
        "process_rss_bytes": 2**30,
    }


def scalar(client: Any, sql: str) -> Any:
    return client.query(sql).result_rows[0][0]


def raw_counts(client: Any, db: str) -> dict[tuple[str, str, str], tuple[int, float]]:
    """(table, project, FINAL or not) -> (rows, sum of a value column): what each raw table holds."""
    out = {}
    value = {"metric_points": "value", "gpu_samples": "utilization_pct", "host_samples": "host_cpu_pct"}
    for table in RAW:
        for final in ("", "FINAL"):
            rows = client.query(f"SELECT project, count(), sum({value[table]}) FROM {db}.{table} {final} "  # noqa: S608
                                "GROUP BY project").result_rows
            # sums rounded: a merge reorders rows, and a float sum depends on the order in its last bits
            out.update({(table, str(p), final or "raw"): (int(c), round(float(s), 9)) for p, c, s in rows})
    return out


def rollups(client: Any, db: str) -> list[Any]:
    """The rollups' merged states, as comparable values."""
    metric = client.query(
        f"SELECT run_id, metric, argMaxMerge(last_value_state), min(min_value_state), max(max_value_state), "  # noqa: S608
        f"toUInt64(groupBitmapMerge(steps_state)), sum(deliveries_state) FROM {db}.metric_summary_states "
        "GROUP BY run_id, metric ORDER BY run_id, metric").result_rows
    held = client.query(f"SELECT run_id, count(), sum(first_ms), sum(last_ms) FROM {db}.gpu_held_slots FINAL "  # noqa: S608
                        "GROUP BY run_id ORDER BY run_id").result_rows
    hours = client.query(f"SELECT run_id, gpu_hours, samples FROM {db}.gpu_usage_by_run ORDER BY run_id").result_rows  # noqa: S608
    return [metric, held, hours]


def answers(client: Any, db: str) -> list[Any]:
    """What users read: the run list and the leaderboards of both projects."""
    out: list[Any] = []
    for project in ("vision", "audio"):
        table = queries.runs(client, db, project=project)
        out.append((table.columns, sorted(map(repr, table.rows))))
        for metric in ("acc", "loss"):
            board = queries.leaderboard(client, db, project, metric)
            out.append((board.columns, board.rows, board.left_out))
    return out


@pytest.fixture
def loaded(clickhouse_dsn: str, tmp_path: Path) -> Iterator[tuple[ClickHouseSink, dict[str, str], int]]:
    """vision: v0 (old and recent points), v1 (only old points, an infinity); audio: a0 (old and recent
    points). The old points' batch is redelivered. Samples old and recent for v0 and a0."""
    sink = ClickHouseSink(clickhouse_dsn)
    ids = start(sink, tmp_path / "spool", {"v0": "vision", "v1": "vision", "a0": "audio"})
    now = now_us()
    old, recent = now - 40 * DAY_US, now - DAY_US
    first = (curve(ids["v0"], range(0, 20), old, 0.0) + curve(ids["a0"], range(0, 20), old, 0.1)
             + curve(ids["v1"], range(0, 30), old, 0.2))  # two runs of one project in a batch
    write_points(sink, first, now)
    write_points(sink, first, now)  # redelivered: these pairs are summarised from FINAL
    write_points(sink, [(ids["v1"], "loss", 30, -math.inf, old + 30)], now)
    write_points(sink, curve(ids["v0"], range(20, 40), recent, 0.0) + curve(ids["a0"], range(20, 40), recent, 0.1),
                 now)
    for name in ("v0", "a0"):
        write_samples(sink, ids[name], [old + i * 10 * SECOND_US for i in range(6)]
                      + [recent + i * 10 * SECOND_US for i in range(4)])
    yield sink, ids, now
    sink.close()


def optimize(client: Any, db: str) -> None:
    for table in RAW:
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")


def test_expiry_drops_one_projects_old_raw_rows_and_keeps_every_answer(loaded: Any) -> None:
    sink, ids, _ = loaded
    client, db = sink.client, sink.database
    optimize(client, db)  # the redelivered copies collapse now, so that the rows without FINAL compare below
    raw_before, rollups_before = raw_counts(client, db), rollups(client, db)
    summary_before, answers_before = stored_summary(client, db), answers(client, db)
    # the rows carry their run's project, filled by the sink
    assert {key[1] for key in raw_before} == {"vision", "audio"}
    sdk = client.query(f"SELECT project, count() FROM {db}.metric_points WHERE metric = 'sdk' "  # noqa: S608
                       "GROUP BY project ORDER BY project").result_rows
    assert sdk == [("audio", 3), ("vision", 6)]  # logged through the SDK's spool and `ingest`
    assert raw_before["metric_points", "vision", "FINAL"][0] == 2 * 20 + 2 * 20 + 2 * 30 + 1 + 6
    assert raw_before["metric_points", "vision", "raw"][0] == 2 * 20 + 2 * 20 + 2 * 30 + 1 + 6
    assert scalar(client, f"SELECT sum(deliveries_state) - toUInt64(groupBitmapMerge(steps_state)) FROM "  # noqa: S608
                  f"{db}.metric_summary_states WHERE run_id = '{ids['v0']}' AND metric = 'acc'") == 20  # redelivered

    done = set_retention(client, db, "vision", 30)
    assert done["raw_days"] == 30 and done["rows_assigned"] == 0
    optimize(client, db)

    raw_after = raw_counts(client, db)
    # vision: only v0's recent 20 steps (2 metrics), the SDK's recent points and v0's 4 recent samples are
    # left, with and without FINAL
    recent_sum = math.fsum(p[3] for p in curve(ids["v0"], range(20, 40), 0, 0.0)) + 2 * (0.0 + 0.1 + 0.2)
    for final in ("raw", "FINAL"):
        assert raw_after["metric_points", "vision", final][0] == 40 + 6
        assert raw_after["metric_points", "vision", final][1] == pytest.approx(recent_sum, rel=1e-12)
        assert raw_after["gpu_samples", "vision", final] == (4, pytest.approx(50.0 * 4 + 6 + 7 + 8 + 9))
        assert raw_after["host_samples", "vision", final][0] == 4
    # audio: untouched, row for row
    assert {k: v for k, v in raw_after.items() if k[1] == "audio"} == {
        k: v for k, v in raw_before.items() if k[1] == "audio"}
    assert scalar(client, f"SELECT count() FROM {db}.metric_points WHERE run_id = '{ids['v1']}' "  # noqa: S608
                  "AND metric != 'sdk'") == 0
    # rollups, summaries, run list and leaderboards answer as before
    assert rollups(client, db) == rollups_before
    assert_same_summary(stored_summary(client, db), summary_before)
    assert answers(client, db) == answers_before

    # a later refresh of the expired runs (what a tag or a note triggers) keeps their summaries
    sink.refresh_summaries(set(ids.values()))
    assert_same_summary(stored_summary(client, db), summary_before)
    assert answers(client, db) == answers_before
    summarised = scalar(client, f"SELECT points['acc'] FROM {db}.run_summary FINAL WHERE run_id = '{ids['v0']}'")  # noqa: S608
    stored = scalar(client, f"SELECT count() FROM {db}.metric_points FINAL WHERE run_id = '{ids['v0']}' "  # noqa: S608
                    "AND metric = 'acc'")
    assert (summarised, stored) == (40, 20)  # the raw points are gone, the summary still counts them

    # a step logged after the expiry (a resumed run) still reaches the merged summary
    write_points(sink, [(ids["v0"], "acc", 40, 0.25, now_us()), (ids["v0"], "loss", 40, 0.001, now_us())], now_us())
    got = stored_summary(client, db)[ids["v0"]]
    want = summary_before[ids["v0"]]
    assert got["acc"]["final"] == 0.25 and got["acc"]["last_step"] == 40 and got["acc"]["points"] == 41
    assert got["acc"]["min_value"] == 0.25 and got["acc"]["min_step"] == 40
    assert got["acc"]["max_value"] == want["acc"]["max_value"] and got["acc"]["max_step"] == want["acc"]["max_step"]
    assert got["loss"]["min_value"] == 0.001 and got["loss"]["best"] == 0.001 and got["loss"]["best_step"] == 40
    assert got["loss"]["max_value"] == want["loss"]["max_value"] == 2.0  # from the expired step 0


def assert_same_summary(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for run_id in want:
        assert got[run_id].keys() == want[run_id].keys(), run_id
        for metric in want[run_id]:
            for name in MAPS:
                g, w = got[run_id][metric][name], want[run_id][metric][name]
                assert (g == w) or (isinstance(g, float) and math.isnan(g) and math.isnan(w)), (run_id, metric, name)


def test_points_written_before_their_runs_start_are_assigned_and_expire(clickhouse_dsn: str, tmp_path: Path) -> None:
    sink = ClickHouseSink(clickhouse_dsn)
    client, db = sink.client, sink.database
    try:
        early = "0190a0a0-0000-7000-8000-00000000beef"
        old = now_us() - 40 * DAY_US
        write_points(sink, curve(early, range(10), old, 0.0), now_us())  # its run_started not stored yet
        assert scalar(client, f"SELECT count() FROM {db}.metric_points WHERE project = ''") == 20  # noqa: S608
        start(sink, tmp_path / "spool", {"other": "speech"})
        assert [row[0] for row in show_retention(client, db)[1]] == ["speech", UNASSIGNED]
        assert show_retention(client, db)[1][1][4] == 20
        client.insert(f"{db}.runs", [[early, "vision", "late-start", old]],
                      column_names=["run_id", "project", "run_name", "started_at"])
        done = set_retention(client, db, "vision", 7)
        assert done["rows_assigned"] == 20
        optimize(client, db)
        assert [row[0] for row in show_retention(client, db)[1]] == ["speech", "vision"]  # none unassigned
        left = client.query(f"SELECT project, count() FROM {db}.metric_points GROUP BY project").result_rows  # noqa: S608
        assert left == [("speech", 3)]  # the other project's recent points only
    finally:
        sink.close()


class Message:
    """What `Batch.add_messages` reads of a Kafka message."""

    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "gpu_samples"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def test_other_ranks_points_and_histograms_carry_their_project_and_expire_by_its_rule(clickhouse_dsn: str,
                                                                                       tmp_path: Path) -> None:
    """rank_metric_points and metric_histograms (issue 14) are raw rows too: a project's rule drops its old
    ones and leaves the recent ones and every other project's."""
    sink = ClickHouseSink(clickhouse_dsn)
    try:
        client, db = sink.client, sink.database
        ids = start(sink, tmp_path / "spool", {"v0": "vision", "a0": "audio"})
        now = now_us()
        ages = {"old": now - 40 * DAY_US, "recent": now - DAY_US}
        batch = Batch()
        for name, run_id in ids.items():
            for age, t in ages.items():
                base = {"event_id": f"{name}-{age}", "run_id": run_id, "timestamp_us": t, "attempt": 1}
                batch.add("rank_metric_steps", {**base, "rank": 1, "node": "n1", "metric_names": ["step_time"],
                                                "metric_index": [0, 0], "steps": [0, 1] if age == "old" else [2, 3],
                                                "values": [0.5, 0.25],
                                                "times_us": [t, t + 1]}, now_us=now)
                batch.add("metric_histogram", {**base, "event_id": f"{name}-{age}-h", "rank": 0, "node": "n0",
                                               "metric": "grad", "step": 0 if age == "old" else 1, "time_us": t,
                                               "edges": [0.0, 1.0], "counts": [3], "nan_count": 0,
                                               "neg_inf_count": 0, "pos_inf_count": 0}, now_us=now)
        sink.write(batch)

        def by_project(table: str) -> dict[str, int]:
            rows = client.query(f"SELECT project, count() FROM {db}.{table} FINAL GROUP BY project").result_rows  # noqa: S608
            return {str(project): int(count) for project, count in rows}

        assert by_project("rank_metric_points") == {"vision": 4, "audio": 4}
        assert by_project("metric_histograms") == {"vision": 2, "audio": 2}
        done = set_retention(client, db, "vision", 30)
        assert "WHERE project = 'vision'" in done["ttl"]["rank_metric_points"]
        assert "WHERE project = 'vision'" in done["ttl"]["metric_histograms"]
        for table in ("rank_metric_points", "metric_histograms"):
            client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
        assert by_project("rank_metric_points") == {"vision": 2, "audio": 4}
        assert by_project("metric_histograms") == {"vision": 1, "audio": 2}
    finally:
        sink.close()


def test_samples_decoded_in_bulk_carry_their_project(loaded: Any) -> None:
    """The consumer's bulk path (a poll's small gpu_samples messages decoded together, kept as Arrow)."""
    sink, ids, now = loaded
    client, db = sink.client, sink.database
    encoder, decoder = Encoder(bundled_catalogue()), Decoder(bundled_catalogue())
    runs = [ids["v0"], ids["v1"], ids["a0"]] * 20  # two runs of one project among them
    batch = Batch()
    messages = [Message(encoder.encode("gpu_samples", sample_event(run_id, now - number, 1000 + number)), number)
                for number, run_id in enumerate(runs)]
    assert batch.add_messages(decoder, messages, now) == []
    assert batch.arrow_table("gpu_samples") is not None  # the bulk path, not the Python lists
    sink.write(batch)
    for table in ("gpu_samples", "host_samples"):
        got = client.query(f"SELECT run_id, project, count() FROM {db}.{table} WHERE time > {now - 100} / 1e6 "  # noqa: S608
                           "GROUP BY run_id, project ORDER BY project, run_id").result_rows
        assert got == sorted([(ids["a0"], "audio", 20), (ids["v0"], "vision", 20), (ids["v1"], "vision", 20)],
                             key=lambda row: (row[1], row[0])), table


def test_show_and_clear(loaded: Any) -> None:
    sink, ids, _ = loaded
    client, db = sink.client, sink.database
    columns, rows = show_retention(client, db)
    assert [row[:2] for row in rows] == [["audio", "forever"], ["vision", "forever"]]
    set_retention(client, db, "vision", 90)
    set_retention(client, db, "vision", 60)  # replaces the rule: nothing is 60 days old
    optimize(client, db)
    by_project = {row[0]: dict(zip(columns, row, strict=True)) for row in show_retention(client, db)[1]}
    assert by_project["vision"]["raw_days"] == 60 and by_project["audio"]["raw_days"] == "forever"
    assert by_project["vision"]["raw_points"] == 2 * 40 + 2 * 30 + 1 + 6
    assert by_project["vision"]["raw_samples"] == 2 * 10 and by_project["vision"]["runs"] == 2
    assert show_retention(client, db, "audio")[1][0][1] == "forever"

    done = clear_retention(client, db, "vision")
    assert done["raw_days"] == 60
    assert show_retention(client, db, "vision")[1][0][1] == "forever"
    for table in RAW:  # no rule left, and no TTL left on the tables
        assert " TTL " not in scalar(client, "SELECT create_table_query FROM system.tables "
                                     f"WHERE database = '{db}' AND name = '{table}'")
    optimize(client, db)
    assert scalar(client, f"SELECT count() FROM {db}.metric_points FINAL") == 2 * 40 * 2 + 2 * 30 + 1 + 9  # noqa: S608
    with pytest.raises(ValueError, match="no retention is set for 'vision'"):
        clear_retention(client, db, "vision")


def test_the_global_sample_ttl_and_project_rules_compose(loaded: Any) -> None:
    sink, _, _ = loaded
    client, db = sink.client, sink.database
    migrate(client, db, sample_ttl_days=365)
    set_retention(client, db, "vision", 30)
    ddl = {table: scalar(client, "SELECT create_table_query FROM system.tables "
                         f"WHERE database = '{db}' AND name = '{table}'") for table in RAW}
    assert "toIntervalDay(365)" in ddl["gpu_samples"] and "WHERE project = 'vision'" in ddl["gpu_samples"]
    assert "toIntervalDay(365)" not in ddl["metric_points"] and "WHERE project = 'vision'" in ddl["metric_points"]
    set_sample_ttl(client, db, 10)  # `migrate --sample-ttl-days 10`: the project rule stays on metric_points
    gpu = scalar(client, f"SELECT create_table_query FROM system.tables WHERE database = '{db}' "
                 "AND name = 'gpu_samples'")
    assert "toIntervalDay(10)" in gpu and "WHERE project" not in gpu  # 30 days is no shorter than 10: left out
    optimize(client, db)
    counts = raw_counts(client, db)
    assert counts["gpu_samples", "audio", "FINAL"][0] == 4  # the global rule: 40-day-old samples of any project
    assert counts["metric_points", "audio", "FINAL"][0] == 2 * 40 + 3  # points: no global rule, no audio rule
    assert counts["metric_points", "vision", "FINAL"][0] == 2 * 20 + 6
    set_sample_ttl(client, db, 0)
    gpu = scalar(client, f"SELECT create_table_query FROM system.tables WHERE database = '{db}' "
                 "AND name = 'gpu_samples'")
    assert "toIntervalDay(10)" not in gpu and "WHERE project = 'vision'" in gpu


@pytest.mark.parametrize(("value", "message"), [
    (0, "at least 1 day.*got 0"), (-3, "at least 1 day.*got -3"), ("1.5", "whole number of days, got '1.5'"),
    ("abc", "whole number of days, got 'abc'"), (True, "whole number of days, got True"),
    (MAX_RAW_DAYS + 1, f"at most {MAX_RAW_DAYS} days.*got {MAX_RAW_DAYS + 1}"),
])
def test_bad_days_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_raw_days(value)


def test_bad_input_writes_nothing(loaded: Any) -> None:
    sink, _, _ = loaded
    client, db = sink.client, sink.database
    ddl = "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} ORDER BY name"
    before = client.query(ddl, parameters={"db": db}).result_rows
    for project, days, message in (("vision", 0, "got 0"), ("vision", "-3", "got -3"), ("nope", 30, "'nope'"),
                                   ("", 30, "project: expected a project name")):
        with pytest.raises(ValueError, match=message):
            set_retention(client, db, project, days)
    with pytest.raises(ValueError, match="no retention is set for 'audio'"):
        clear_retention(client, db, "audio")
    with pytest.raises(ValueError, match="no run of project 'nope'"):
        show_retention(client, db, "nope")
    assert scalar(client, f"SELECT count() FROM {db}.retention_rules") == 0  # noqa: S608
    assert client.query(ddl, parameters={"db": db}).result_rows == before


def test_a_project_name_is_quoted_in_the_rule() -> None:
    clause = raw_ttl_clause("metric_points", {"it's": 5, "b\\": 3})
    assert clause == ("TTL toDateTime(time) + INTERVAL 3 DAY DELETE WHERE project = 'b\\\\', "
                      "toDateTime(time) + INTERVAL 5 DAY DELETE WHERE project = 'it\\'s'")  # in project order
    assert raw_ttl_clause("metric_points", {}, 30) == ""  # the global rule is the samples' only


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


def test_the_command(clickhouse_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = clickhouse_dsn
    sink = ClickHouseSink(dsn)
    ids = start(sink, tmp_path / "spool", {"v0": "vision"})
    write_points(sink, curve(ids["v0"], range(5), now_us() - 40 * DAY_US, 0.0), now_us())
    sink.close()

    def runstream_cli(*args: str) -> Done:
        """The command as a user runs it, in this process (chDB opens a folder in one process at a time)."""
        code = main(["retention", *args, "--clickhouse", dsn])
        out, err = capsys.readouterr()
        return Done(code, out, err)

    refused = runstream_cli("set", "vision", "--raw-days", "0")
    assert refused.returncode == 2 and "--raw-days: expected at least 1 day" in refused.stderr
    refused = runstream_cli("set", "nope", "--raw-days", "30")
    assert refused.returncode == 2 and "no run of project 'nope'" in refused.stderr
    done = runstream_cli("set", "vision", "--raw-days", "30", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "project,raw_days,set_at,rows_assigned,tables"
    assert done.stdout.splitlines()[1].startswith("vision,30,")
    shown = runstream_cli("show", "--format", "csv")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].startswith("vision,30,")
    assert shown.stdout.splitlines()[1].split(",")[4] == "3"  # the 40-day-old points went, the SDK's 3 stay
    cleared = runstream_cli("clear", "vision")
    assert cleared.returncode == 0 and "vision" in cleared.stdout
