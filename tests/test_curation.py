"""Curation after the fact (runstream.analysis.curation, runstream.consumer.run_deletion): tag, note,
archive and delete, through the embedded path (chDB, the consumer's own sink) and through the real broker.

Runs are logged with the SDK to a spool and ingested as `runstream ingest` does; every command goes
through `runstream.cli.main`. Deletion is checked against every table that has a run_id column, as the
table specs list them (not a list kept here), counted with and without FINAL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from consuming import consume_until

import runstream
from runstream.analysis import curation
from runstream.cli import main
from runstream.consumer import ClickHouseSink, ConsumerService, ConsumerSettings, ingest_spool
from runstream.consumer.clickhouse_sink import FAULT_BEFORE_SUMMARY_ENV
from runstream.consumer.lifecycle_tables import RUN_DELETIONS
from runstream.consumer.migrations import TABLES
from runstream.producer.run import Run, producer_stats
from runstream.producer.settings import ProducerSettings
from runstream.producer.sinks import SpoolSink

#: Every table with rows of a run, from the specs; the audit table keeps its row by design.
RUN_ID_TABLES = [t.name for t in TABLES if "run_id" in t.column_names and t.name != RUN_DELETIONS.name]
T0_US = 1_760_000_000_000_000


@pytest.fixture(autouse=True)
def _no_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded path unless a test names a broker."""
    for name in ("RUNSTREAM_KAFKA", "RUNSTREAM_CONFIG", "RUNSTREAM_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)


def log_run(spool: Path, name: str, *, tags: dict[str, str] | None = None, loss: float = 1.0,
            kafka: str | None = None, prefix: str | None = None) -> str:
    """A finished run with params, 50 steps of two metrics and GPU + host samples; returns its id."""
    settings = ProducerSettings.resolve(spool=str(spool), sample_interval_s=0, kafka=kafka, topic_prefix=prefix)
    with Run(project="cur", name=name, params={"lr": 0.1, "opt": "adam"}, tags=tags or {},
                       settings=settings) as run:
        for step in range(50):
            run.log({"loss": loss + 1.0 / (step + 1), "acc": step / 50}, step=step)
        run.log_gpu_samples([{"time_us": T0_US + i * 10_000_000, "gpu_index": 0, "gpu_uuid": "GPU-0",
                              "gpu_model": "H100", "utilization_pct": 50.0, "power_w": 300.0} for i in range(20)],
                            host="node-1", host_metrics={"host_cpu_pct": 12.5, "process_rss_bytes": 1 << 30})
    return run.run_id


def counts(client: Any, db: str, run_id: str, final: bool = False) -> dict[str, int]:
    """Rows of `run_id` per table (with FINAL where the engine collapses rows)."""
    out = {}
    for name in RUN_ID_TABLES:
        spec = next(t for t in TABLES if t.name == name)
        modifier = " FINAL" if final and spec.engine.endswith("MergeTree") else ""
        out[name] = client.query(f"SELECT count() FROM {db}.{name}{modifier} WHERE run_id = {{r:String}}",
                                 parameters={"r": run_id}).result_rows[0][0]
    return out


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def stored(tmp_path: Path, clickhouse_dsn: str) -> tuple[Any, str, str, list[str]]:
    """Three runs of project `cur` stored as the consumer stores them: (client, db, dsn, run ids)."""
    sink = ClickHouseSink(clickhouse_dsn)
    ids = []
    for name, tags, loss in (("keep", {"team": "a", "stage": "x"}, 0.5), ("hide", {"team": "a"}, 0.1),
                             ("gone", {"team": "b"}, 0.3)):
        ids.append(log_run(tmp_path / name, name, tags=tags, loss=loss))
        assert not ingest_spool(tmp_path / name, sink).rejected
    return sink.client, sink.database, clickhouse_dsn, ids


def _json(out: str) -> list[dict[str, Any]]:
    return json.loads(out)  # type: ignore[no-any-return]


def test_tag_and_note_replace_the_started_tags_and_keep_the_whole_state(
    stored: tuple[Any, str, str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, db, dsn, (keep, _hide, _gone) = stored
    code, out, _ = cli(capsys, "tag", keep, "owner=me", "flag", "--remove", "stage", "--clickhouse", dsn,
                       "--format", "json")
    assert code == 0
    [done] = _json(out)
    assert done["tags"] == "flag,owner=me,team=a" and done["via"] == f"database {db}" and done["visible"] is True
    assert cli(capsys, "note", keep, "diverged at 3k: bad lr", "--clickhouse", dsn)[0] == 0
    tags, note, archived = client.query(f"SELECT tags, note, archived FROM {db}.run_summary FINAL "
                                        "WHERE run_id = {r:String}", parameters={"r": keep}).result_rows[0]
    assert (tags, note, archived) == ({"team": "a", "owner": "me", "flag": ""}, "diverged at 3k: bad lr", False)
    # the note kept the tags: each event carries the whole state (the topic is compacted by run id)
    rows = client.query(f"SELECT action, tags, note FROM {db}.run_curation WHERE run_id = {{r:String}} "
                        "ORDER BY updated_at", parameters={"r": keep}).result_rows
    assert [r[0] for r in rows] == ["tag", "note"] and rows[1][1] == rows[0][1]
    assert client.query(f"SELECT count() FROM {db}.run_curation FINAL").result_rows[0][0] == 1
    # what --wait polls: the note's event is applied; an event never sent is not, and the wait says so
    [(event_id,)] = client.query(f"SELECT event_id FROM {db}.run_curation FINAL").result_rows
    applied = curation.curation_record(keep, "note", curation.CuratedState(tags, note), event_id=event_id)
    assert curation.is_visible(client, db, applied)
    never_sent = curation.curation_record(keep, "note", curation.CuratedState(tags, "other"))
    assert not curation.is_visible(client, db, never_sent)
    assert curation.wait_visible(client, db, never_sent, 0.0) is False
    # the filter sees curated tags, not the started ones
    code, out, _ = cli(capsys, "runs", "--where", "tags.owner = 'me'", "--clickhouse", dsn, "--format", "json")
    assert code == 0 and [r["run_id"] for r in _json(out)] == [keep]
    code, out, _ = cli(capsys, "runs", "--where", "tags.stage = 'x'", "--clickhouse", dsn, "--format", "json")
    assert code == 0 and _json(out) == []


def test_archived_runs_are_hidden_from_runs_best_and_the_filter_unless_asked(
    stored: tuple[Any, str, str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, db, dsn, (keep, hide, gone) = stored
    code, out, _ = cli(capsys, "archive", "hide", "--clickhouse", dsn, "--format", "json")  # by its name
    assert code == 0 and _json(out)[0]["run_id"] == hide and _json(out)[0]["archived"] is True

    def listed(*extra: str) -> list[str]:
        code, out, err = cli(capsys, *extra, "--clickhouse", dsn, "--format", "json")
        assert code == 0, err
        return [row["run_id"] for row in _json(out)]

    assert listed("runs", "--project", "cur") == [keep, gone]
    assert sorted(listed("runs", "--project", "cur", "--archived")) == sorted([keep, hide, gone])
    assert listed("runs", "--where", "tags.team = 'a'") == [keep]
    assert listed("runs", "--where", "tags.team = 'a'", "--archived") == [keep, hide]
    # hide has the lowest loss: it would lead the leaderboard
    assert listed("best", "--project", "cur", "--metric", "loss") == [gone, keep]
    assert listed("best", "--project", "cur", "--metric", "loss", "--archived") == [hide, gone, keep]
    with runstream.Client(dsn) as rs:
        assert set(rs.runs("cur")["run_id"]) == {keep, gone}
        assert set(rs.runs("cur", include_archived=True)["run_id"]) == {keep, hide, gone}
        assert list(rs.best("cur", "loss")["run_id"]) == [gone, keep]
        assert rs.unarchive(hide)["archived"] is False
        assert set(rs.runs("cur")["run_id"]) == {keep, hide, gone}
        assert rs.archive(hide)["archived"] is True
    assert cli(capsys, "archive", hide, "--undo", "--clickhouse", dsn)[0] == 0
    assert sorted(listed("runs")) == sorted([keep, hide, gone])
    # the data of an archived run was never touched
    assert counts(client, db, hide)["metric_points"] == 100


def test_delete_needs_yes_then_leaves_no_row_in_any_table_and_one_audit_row(
    stored: tuple[Any, str, str, list[str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    client, db, dsn, (keep, hide, gone) = stored
    before = counts(client, db, gone)
    others = {run: (counts(client, db, run), counts(client, db, run, final=True)) for run in (keep, hide)}
    # every kind of table holds rows of the run: facts, rollups, lifecycle, summary
    for table in ("runs", "run_params", "metric_points", "gpu_samples", "host_samples", "run_finishes",
                  "metric_summary_states", "gpu_usage_hourly_states", "gpu_held_slots", "run_summary", "run_attempts"):
        assert before[table] > 0, table

    code, out, err = cli(capsys, "delete", gone, "--clickhouse", dsn, "--format", "json")
    assert code == 1 and "NOT deleted" in err and "--yes" in err
    assert {row["table"]: row["rows"] for row in _json(out)} == {t: n for t, n in before.items() if n}
    assert counts(client, db, gone) == before, "without --yes nothing is written"
    assert client.query(f"SELECT count() FROM {db}.run_curation").result_rows[0][0] == 0

    code, out, err = cli(capsys, "delete", gone, "--yes", "--clickhouse", dsn, "--format", "json")
    assert code == 0, err
    [done] = _json(out)
    # what the run had, and the delete's own run_curation row (stored, then deleted with the run)
    removed = {**{t: n for t, n in before.items() if n}, "run_curation": 1}
    assert done["rows_deleted"] == sum(removed.values())
    assert counts(client, db, gone) == dict.fromkeys(RUN_ID_TABLES, 0)
    assert counts(client, db, gone, final=True) == dict.fromkeys(RUN_ID_TABLES, 0)
    audit = client.query(f"SELECT actor, event_id, rows_deleted FROM {db}.run_deletions FINAL "
                         "WHERE run_id = {r:String}", parameters={"r": gone}).result_rows
    assert len(audit) == 1
    assert dict(audit[0][2]) == removed
    # the other runs kept every row
    assert {run: (counts(client, db, run), counts(client, db, run, final=True)) for run in (keep, hide)} == others

    # redelivery of the same event (a consumer killed before its commit): harmless, the audit row stays one
    record = curation.curation_record(gone, "delete", curation.CuratedState(), actor=audit[0][0],
                                      event_id=audit[0][1], now_us=time.time_ns() // 1000)
    curation.write_directly(client, db, record)
    assert counts(client, db, gone) == dict.fromkeys(RUN_ID_TABLES, 0)
    assert client.query(f"SELECT count() FROM {db}.run_deletions").result_rows[0][0] == 1
    kept = client.query(f"SELECT rows_deleted FROM {db}.run_deletions FINAL").result_rows
    assert dict(kept[0][0]) == dict(audit[0][2])

    # its events replayed (a replica reading the other topics from the start): a deleted run stays deleted
    assert not ingest_spool(tmp_path / "gone", ClickHouseSink(dsn), replay=True).rejected
    assert counts(client, db, gone) == dict.fromkeys(RUN_ID_TABLES, 0)
    assert {run: (counts(client, db, run), counts(client, db, run, final=True)) for run in (keep, hide)} == others

    # the run is gone: deleting it again is refused, naming it, with nothing written
    code, _out, err = cli(capsys, "delete", gone, "--yes", "--clickhouse", dsn)
    assert code == 2 and repr(gone) in err and "no run has this id" in err
    assert client.query(f"SELECT count() FROM {db}.run_deletions").result_rows[0][0] == 1


def test_bad_input_is_refused_naming_the_value_and_nothing_is_written(
    stored: tuple[Any, str, str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    client, db, dsn, (keep, _hide, _gone) = stored
    cases = [
        (("delete", "no-such-run", "--yes"), "'no-such-run'"),
        (("tag", "no-such-run", "a=1"), "'no-such-run'"),
        (("tag", keep, "k=" + "v" * 1025), "1025 characters"),
        (("tag", keep, "k" * 129), "tag key: 129 characters"),
        (("tag", keep, "=v"), "tag key: expected a non-empty key"),
        (("tag", keep, "--remove", "nope"), "tag 'nope': the run has no such tag"),
        (("tag", keep), "name at least one"),
        (("note", keep, "n" * 10_001), "note: 10001 characters"),
        (("tag", keep, "a=\udcff"), "not valid UTF-8"),
    ]
    for argv, expected in cases:
        code, _out, err = cli(capsys, *argv, "--clickhouse", dsn)
        assert code == 2, (argv, err)
        assert expected in err, (argv, err)
    assert client.query(f"SELECT count() FROM {db}.run_curation").result_rows[0][0] == 0
    assert client.query(f"SELECT count() FROM {db}.run_deletions").result_rows[0][0] == 0
    with runstream.Client(dsn) as rs, pytest.raises(ValueError, match="'nope'"):
        rs.untag(keep, "nope")
    assert client.query(f"SELECT count() FROM {db}.run_curation").result_rows[0][0] == 0


READ_COUNTS = r"""
import json, sys
from runstream.consumer.dsn import connect
client, db = connect(sys.argv[1])
run, tables = sys.argv[2], json.loads(sys.argv[3])
def rows(sql):
    return client.query(sql, parameters={"r": run}).result_rows
out = {t: rows(f"SELECT count() FROM {db}.{t} WHERE run_id = {{r:String}}")[0][0] for t in tables}
out["audit"] = [[e, dict(m)] for e, m in rows(f"SELECT event_id, rows_deleted FROM {db}.run_deletions "
                                             "WHERE run_id = {r:String}")]
print(json.dumps(out))
"""


def _read_counts(dsn: str, run_id: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", READ_COUNTS, dsn, run_id, json.dumps(RUN_ID_TABLES)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _ingest(dsn: str, folder: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runstream.cli", "ingest", str(folder), "--clickhouse", dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


@pytest.mark.fault
def test_a_consumer_killed_after_the_delete_before_its_commit_deletes_again_and_keeps_one_audit_row(
    tmp_path: Path
) -> None:
    """kill -9 in the window between the deletes and the summary/commit; the redelivered event deletes again."""
    dsn = f"chdb://{tmp_path / 'ch'}?database=cur"  # a folder of its own: chDB opens it in one process at a time
    curation_spool = tmp_path / "curation"
    victim, survivor = log_run(tmp_path / "victim", "victim"), log_run(tmp_path / "survivor", "survivor")
    for folder in ("victim", "survivor"):
        loaded = _ingest(dsn, tmp_path / folder)
        assert loaded.wait(120) == 0, loaded.stderr.read() if loaded.stderr else ""
    before = _read_counts(dsn, victim)
    survivor_before = _read_counts(dsn, survivor)
    assert before["metric_points"] == 100 and before["audit"] == []

    sink = SpoolSink(curation_spool)  # the delete as the consumer would receive it
    record = curation.curation_record(victim, "delete", curation.CuratedState(), actor="tester")
    sink.send("run_curation", victim, record)
    sink.close(5)

    marker = tmp_path / "deleted"
    first = _ingest(dsn, curation_spool, {FAULT_BEFORE_SUMMARY_ENV: str(marker)})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the delete never reached the fault point"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    window = _read_counts(dsn, victim)
    assert {t: window[t] for t in RUN_ID_TABLES} == dict.fromkeys(RUN_ID_TABLES, 0), "deleted, not yet committed"
    [[event, rows]] = window["audit"]
    assert event == record["event_id"]
    assert rows == {t: n for t, n in before.items() if t != "audit" and n} | {"run_curation": 1}

    again = _ingest(dsn, curation_spool)  # redelivered: the same event, delete again
    assert again.wait(120) == 0, again.stderr.read() if again.stderr else ""
    after = _read_counts(dsn, victim)
    assert {t: after[t] for t in RUN_ID_TABLES} == dict.fromkeys(RUN_ID_TABLES, 0)
    assert after["audit"] == window["audit"], "one audit row, with the first attempt's counts"
    assert _read_counts(dsn, survivor) == survivor_before




@pytest.mark.integration
def test_curation_travels_through_the_compacted_kafka_topic_to_the_consumer(
    kafka_bootstrap: str, clickhouse_dsn: str, topic_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

    spool = tmp_path / "spool"
    sent_before = producer_stats()["sent_events"]
    curated = log_run(spool, "curated", tags={"team": "a"}, kafka=kafka_bootstrap, prefix=topic_prefix)
    other = log_run(spool, "other", kafka=kafka_bootstrap, prefix=topic_prefix)
    logged = producer_stats()["sent_events"] - sent_before
    settings = ConsumerSettings(kafka=kafka_bootstrap, clickhouse=clickhouse_dsn, topic_prefix=topic_prefix,
                                batch_max_wait_s=0.2)
    service = ConsumerService(settings)
    stats = consume_until(service, logged)
    assert stats.dead_letters == 0 and stats.events == logged
    client, db = service.sink.client, service.sink.database
    via = ("--kafka", kafka_bootstrap, "--topic-prefix", topic_prefix, "--clickhouse", clickhouse_dsn,
           "--format", "json")

    # chDB opens a folder in one process at a time, and the command reads the run's state there: the
    # consumer is stopped while a command runs, and started again (same group) to apply what it sent.
    for argv in (("tag", curated, "owner=me"), ("note", curated, "keep me"), ("archive", curated)):
        code, out, err = cli(capsys, *argv, *via)
        assert code == 0, err
        assert _json(out)[0]["via"] == f"kafka topic {topic_prefix}run_curation at {kafka_bootstrap}"
        service = ConsumerService(settings)
        assert consume_until(service, 1).events == 1
    # --wait with no consumer running: sent, not applied in time, said so (exit 1); applied once one runs
    code, out, err = cli(capsys, "tag", curated, "late", "--wait", "0.3", *via)
    assert code == 1 and "not applied within 0.3 s" in err and _json(out)[0]["visible"] is False
    service = ConsumerService(settings)
    assert consume_until(service, 1).events == 1
    tags, note, archived = client.query(f"SELECT tags, note, archived FROM {db}.run_summary FINAL "
                                        "WHERE run_id = {r:String}", parameters={"r": curated}).result_rows[0]
    assert (tags, note, archived) == ({"team": "a", "owner": "me", "late": ""}, "keep me", True)

    before = counts(client, db, curated)
    code, out, err = cli(capsys, "delete", curated, "--yes", *via)
    assert code == 0, err
    service = ConsumerService(settings)
    assert consume_until(service, 1).events == 1
    assert counts(client, db, curated) == dict.fromkeys(RUN_ID_TABLES, 0)
    assert counts(client, db, other)["metric_points"] == 100
    audit = client.query(f"SELECT rows_deleted FROM {db}.run_deletions FINAL WHERE run_id = {{r:String}}",
                         parameters={"r": curated}).result_rows
    removed = {t: n for t, n in before.items() if n} | {"run_curation": before["run_curation"] + 1}  # + the delete's
    assert [dict(r[0]) for r in audit] == [removed]

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"{topic_prefix}run_curation"
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    assert future.result(30)["cleanup.policy"].value == "compact"
    other_topic = f"{topic_prefix}metric_steps"
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, other_topic)]).values()
    assert future.result(30)["cleanup.policy"].value == "delete"
