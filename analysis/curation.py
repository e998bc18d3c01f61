"""Curation after the fact: tag, untag, note, archive, unarchive and delete runs.

`runstream tag RUN KEY[=VALUE] ... [--remove KEY ...]`, `runstream note RUN TEXT`, `runstream archive RUN
[--undo]`, `runstream delete RUN --yes`, and `runstream.Client.tag/untag/note/archive/unarchive/delete`.

Every change travels as a `run_curation` event carrying the run's WHOLE curated state (tags, note,
archived, deleted): its topic is compacted by run id, so the last message of a run must say everything.
The state is read (run_curation FINAL, else the tags the run started with), changed and sent:

- through Kafka when Kafka is configured (`--kafka`, RUNSTREAM_KAFKA, the config file's [kafka] table),
  to `<prefix>run_curation`, so that every consumer and replica applies the same change;
- otherwise (the embedded default) straight through the consumer's own path (`Batch` + `ClickHouseSink.write`),
  so the same code applies it: the run summary takes the tags, note and archive flag, and a delete
  removes the run's rows from every table (runstream.consumer.run_deletion) and leaves an audit row.

A read-modify-write: two changes to one run sent through Kafka before the consumer applied the first
would lose the first; `--wait` (Client: `wait=`) waits until a change is visible before returning.
"""

from __future__ import annotations

import argparse
import getpass
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from runstream.producer.encodable import check_text
from runstream.producer.run import MAX_LABEL_CHARS

ACTIONS = ("tag", "untag", "note", "archive", "unarchive", "delete")
#: A tag key is a label (as a group or sweep name); values and notes are longer, but bounded.
MAX_TAG_KEY_CHARS = MAX_LABEL_CHARS
MAX_TAG_VALUE_CHARS = 1024
MAX_NOTE_CHARS = 10_000
#: How long a Kafka delivery may take before the command gives up (nothing is then sent).
DELIVERY_TIMEOUT_S = 30.0
#: Seconds `--wait` waits for the change to be visible when no number is given.
DEFAULT_WAIT_S = 60.0


@dataclass(frozen=True)
class CuratedState:
    """What curation decides about a run: its tags (replacing those it started with), note, archive flag."""

    tags: dict[str, str] = field(default_factory=dict)
    note: str = ""
    archived: bool = False


@dataclass
class Curation:
    """What a curation command did."""

    run_id: str
    run_name: str
    action: str
    event_id: str
    state: CuratedState
    via: str  # "kafka topic T at SERVERS" or "database D"
    visible: bool | None = None  # None: not waited for
    rows_deleted: dict[str, int] | None = None

    def row(self) -> list[Any]:
        """One output row (ROW_COLUMNS): `visible` is None when not waited for, `rows_deleted` None but for a
        delete that was applied."""
        tags = ",".join(f"{k}={v}" if v else k for k, v in sorted(self.state.tags.items()))
        deleted = None if self.rows_deleted is None else sum(self.rows_deleted.values())
        return [self.run_id, self.run_name, self.action, tags, self.state.note, self.state.archived, self.via,
                self.visible, deleted]


ROW_COLUMNS = ["run_id", "name", "action", "tags", "note", "archived", "via", "visible", "rows_deleted"]


# -- validation ----------------------------------------------------------------------------------

def _bounded(what: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise ValueError(f"{what}: {len(value)} characters, more than the {limit} allowed ({value[:40]!r}...)")
    check_text(what, value)


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tags to set, checked like the SDK's (UTF-8) and bounded: a key of at most MAX_TAG_KEY_CHARS, not
    empty, a value of at most MAX_TAG_VALUE_CHARS."""
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"tag {key!r}: keys and values are strings, got {type(key).__name__} = "
                             f"{type(value).__name__} {value!r}")
        if not key.strip():
            raise ValueError(f"tag key: expected a non-empty key, got {key!r}")
        _bounded("tag key", key, MAX_TAG_KEY_CHARS)
        _bounded(f"tag {key!r}", value, MAX_TAG_VALUE_CHARS)
        checked[key] = value
    return checked


def check_note(note: str) -> str:
    if not isinstance(note, str):
        raise ValueError(f"note: expected text, got {type(note).__name__} {note!r}")
    _bounded("note", note, MAX_NOTE_CHARS)
    return note


def parse_tag_args(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` or `KEY` (an empty value, as the SDK's list of tags) from the command line."""
    tags: dict[str, str] = {}
    for item in items:
        key, _sep, value = item.partition("=")
        tags[key] = value
    return check_tags(tags)


# -- the state -------------------------------------------------------------------------------------

def resolve_run(client: Any, database: str, ref: str) -> tuple[str, str]:
    """(run_id, run_name) of a run id or unique name; a run not stored raises ValueError naming it."""
    from runstream.analysis.queries import resolve_runs

    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"run: expected a run id or name, got {ref!r}")
    return resolve_runs(client, database, [ref])[0]


def current_state(client: Any, database: str, run_id: str) -> CuratedState:
    """The run's curated state: the last curation applied, else the tags it started with."""
    rows = client.query(f"SELECT tags, note, archived FROM {database}.run_curation FINAL "  # noqa: S608
                        "WHERE run_id = {run:String}", parameters={"run": run_id}).result_rows
    if rows:
        tags, note, archived = rows[0]
        return CuratedState(dict(tags), str(note), bool(archived))
    rows = client.query(f"SELECT tags FROM {database}.runs FINAL WHERE run_id = {{run:String}}",  # noqa: S608
                        parameters={"run": run_id}).result_rows
    return CuratedState(dict(rows[0][0]) if rows else {})


def changed_state(state: CuratedState, action: str, *, tags: Mapping[str, str] | None = None,
                  remove: Sequence[str] = (), note: str | None = None) -> CuratedState:
    """The state after `action`; refuses a change that names nothing, or a tag the run does not have."""
    if action == "tag":
        add = check_tags(tags or {})
        if not add and not remove:
            raise ValueError("tag: name at least one KEY[=VALUE] to set or --remove KEY")
        missing = [key for key in remove if key not in state.tags and key not in add]
        if missing:
            raise ValueError(f"tag {missing[0]!r}: the run has no such tag (its tags: "
                             f"{', '.join(sorted(state.tags)) or 'none'})")
        new = {k: v for k, v in state.tags.items() if k not in remove}
        new.update(add)
        return replace(state, tags=new)
    if action == "untag":
        return changed_state(state, "tag", remove=remove)
    if action == "note":
        return replace(state, note=check_note(note if note is not None else ""))
    if action in ("archive", "unarchive"):
        return replace(state, archived=action == "archive")
    if action == "delete":
        return state
    raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")


def curation_record(run_id: str, action: str, state: CuratedState, *, actor: str | None = None,
                    now_us: int | None = None, event_id: str | None = None) -> dict[str, Any]:
    """The run_curation event (schemas/avro/run_curation.v1.avsc) of a change."""
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "run_id": run_id,
        "timestamp_us": time.time_ns() // 1000 if now_us is None else now_us,
        "action": action,
        "actor": actor if actor is not None else _os_user(),
        "tags": dict(state.tags),
        "note": state.note,
        "archived": state.archived,
        "deleted": action == "delete",
    }


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's random uid)
        return "unknown"


# -- delivery ----------------------------------------------------------------------------------------

def send_through_kafka(kafka: Any, topic_prefix: str, record: dict[str, Any],
                       timeout_s: float = DELIVERY_TIMEOUT_S) -> str:
    """Produce the event to the compacted curation topic (keyed by run id) and wait for the broker's ack.

    The topics are created first when missing, as the consumer creates them (the curation topic
    compacted): a topic the broker auto-created would not be. Raises ConnectionError when the event
    was not acknowledged in time; the change then was not made."""
    from confluent_kafka import Producer

    from runstream.consumer.topics_admin import ensure_topics
    from runstream.producer.kafka_settings import ErrorWatch
    from runstream.schemas import CURATION_EVENT_TYPE, Encoder, bundled_catalogue, topic_for

    ensure_topics(kafka, topic_prefix, timeout=timeout_s)
    topic = topic_for(topic_prefix, CURATION_EVENT_TYPE)
    errors = ErrorWatch(kafka, "producer")
    config = kafka.producer_config({"client.id": "runstream-curation",
                                    "message.timeout.ms": int(timeout_s * 1000)})
    config["error_cb"] = errors
    producer = kafka.build(Producer, config, "producer")
    value = Encoder(bundled_catalogue()).encode(CURATION_EVENT_TYPE, record)
    outcome: dict[str, Any] = {}
    producer.produce(topic, value=value, key=record["run_id"].encode(),
                     on_delivery=lambda error, _message: outcome.update(done=True, error=error))
    producer.flush(timeout_s)
    if not outcome.get("done") or outcome.get("error") is not None:
        reason = errors.auth_error or outcome.get("error") or f"no acknowledgement within {timeout_s:g} s"
        raise ConnectionError(f"Kafka {kafka.bootstrap_servers}: the {record['action']} of run {record['run_id']} "
                              f"was not delivered to {topic}: {reason}; nothing was changed")
    return f"kafka topic {topic}"


def write_directly(client: Any, database: str, record: dict[str, Any]) -> str:
    """Apply the event as the consumer would (Batch + ClickHouseSink.write): the same code stores the
    curated state, rewrites the run summary and carries out a delete."""
    from runstream.consumer.batch import Batch
    from runstream.consumer.clickhouse_sink import ClickHouseSink

    batch = Batch()
    batch.add("run_curation", record)
    ClickHouseSink("", client=client, database=database).write(batch)
    return f"database {database}"


def is_visible(client: Any, database: str, record: dict[str, Any]) -> bool:
    """Whether the change has been applied: a delete's audit row is written and the run is gone; any
    other change's row is stored and the run summary shows its state (or a later change replaced it)."""
    run = {"run": record["run_id"], "event": record["event_id"]}
    if record["deleted"]:
        sql = (f"SELECT (SELECT count() FROM {database}.run_deletions WHERE run_id = {{run:String}} "  # noqa: S608
               f"AND event_id = {{event:String}}), (SELECT count() FROM {database}.runs WHERE run_id = {{run:String}})")
        audited, left = client.query(sql, parameters=run).result_rows[0]
        return bool(audited) and not left
    stored = client.query(f"SELECT argMax(event_id, updated_at), countIf(event_id = {{event:String}}) "  # noqa: S608
                          f"FROM {database}.run_curation WHERE run_id = {{run:String}}", parameters=run).result_rows
    latest, ours = stored[0]
    if not ours:
        return False
    if latest != record["event_id"]:
        return True  # applied, and a later change came after it
    rows = client.query(f"SELECT tags, note, archived FROM {database}.run_summary FINAL "  # noqa: S608
                        "WHERE run_id = {run:String}", parameters=run).result_rows
    return bool(rows) and (dict(rows[0][0]), rows[0][1], bool(rows[0][2])) == (
        record["tags"], record["note"], record["archived"])


def wait_visible(client: Any, database: str, record: dict[str, Any], timeout_s: float, *,
                 clock: Callable[[], float] = time.monotonic, pause_s: float = 0.2) -> bool:
    """Poll until the change is applied or `timeout_s` passed; False when it is not visible yet."""
    deadline = clock() + timeout_s
    while True:
        if is_visible(client, database, record):
            return True
        if clock() >= deadline:
            return False
        time.sleep(pause_s)


# -- one entry point for the CLI and the Client ------------------------------------------------

def curate(client: Any, database: str, run: str, action: str, *, tags: Mapping[str, str] | None = None,
           remove: Sequence[str] = (), note: str | None = None, kafka: Any | None = None,
           topic_prefix: str | None = None, wait_s: float | None = None, actor: str | None = None,
           now_us: int | None = None) -> Curation:
    """Read the run's state, apply `action`, send the whole new state (Kafka when `kafka` is settings,
    else straight to the database), and wait up to `wait_s` for it to be visible when asked.

    Every check happens before anything is sent: an unknown run, a bad tag or note raise ValueError and
    nothing is written."""
    if action not in ACTIONS:
        raise ValueError(f"action: expected one of {', '.join(ACTIONS)}, got {action!r}")
    if wait_s is not None and wait_s < 0:
        raise ValueError(f"wait: expected seconds >= 0, got {wait_s!r}")
    run_id, run_name = resolve_run(client, database, run)
    state = changed_state(current_state(client, database, run_id), action, tags=tags, remove=remove, note=note)
    record = curation_record(run_id, action, state, actor=actor, now_us=now_us)
    if kafka is not None:
        from runstream.schemas import DEFAULT_TOPIC_PREFIX

        via = f"{send_through_kafka(kafka, topic_prefix or DEFAULT_TOPIC_PREFIX, record)} at {kafka.bootstrap_servers}"
        visible = None if wait_s is None else wait_visible(client, database, record, wait_s)
    else:
        via = write_directly(client, database, record)
        visible = True
    result = Curation(run_id, run_name, action, record["event_id"], state, via, visible)
    if action == "delete" and visible:
        result.rows_deleted = audited_rows(client, database, run_id, record["event_id"])
    return result


def audited_rows(client: Any, database: str, run_id: str, event_id: str) -> dict[str, int]:
    """The rows a delete removed per table, from its audit row."""
    rows = client.query(f"SELECT rows_deleted FROM {database}.run_deletions FINAL "  # noqa: S608
                        "WHERE run_id = {run:String} AND event_id = {event:String}",
                        parameters={"run": run_id, "event": event_id}).result_rows
    return {str(k): int(v) for k, v in dict(rows[0][0]).items()} if rows else {}


def deletion_preview(client: Any, database: str, run: str) -> tuple[str, str, dict[str, int]]:
    """(run_id, name, rows per table) that `delete` would remove; writes nothing."""
    from runstream.consumer.run_deletion import count_rows

    run_id, run_name = resolve_run(client, database, run)
    return run_id, run_name, count_rows(client, database, run_id)


# -- the CLI -------------------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser) -> None:
    # runstream.cli builds the parser, so it is loaded by now: one set of Kafka options for every command.
    from runstream.cli import _add_kafka_client, _add_topic_prefix
    from runstream.consumer.clickhouse_settings import add_clickhouse_option
    from runstream.output import FORMATS

    parser.add_argument("run", metavar="RUN", help="run id or (unique) run name")
    parser.add_argument("--kafka", default=None, metavar="HOST:PORT",
                        help="send the change through Kafka (default: RUNSTREAM_KAFKA, the config file's [kafka]; "
                        "without any, it is written to the database directly) [env RUNSTREAM_KAFKA]")
    _add_kafka_client(parser, config=False)  # --kafka-option, as every Kafka-using command has it
    _add_topic_prefix(parser)
    parser.add_argument("--wait", nargs="?", type=float, const=DEFAULT_WAIT_S, default=None, metavar="SECONDS",
                        help=f"through Kafka: wait until the consumer applied the change (default {DEFAULT_WAIT_S:g} s "
                        "when no number is given)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    add_clickhouse_option(parser)


def add_parsers(commands: Any) -> None:
    """Register tag, note, archive and delete on the CLI's subparsers object."""
    tag = commands.add_parser(
        "tag", help="set or remove tags of a run after the fact",
        description="Set tags (KEY=VALUE, or KEY for an empty value) and remove others (--remove KEY). The "
        "curated tags replace the ones the run started with in runs, the filter (tags.KEY) and the dashboards.")
    _common(tag)
    tag.add_argument("tags", nargs="*", metavar="KEY[=VALUE]")
    tag.add_argument("--remove", action="append", default=[], metavar="KEY", help="remove this tag (repeatable)")

    note = commands.add_parser("note", help="set the note of a run (an empty TEXT clears it)",
                               description=f"One free-text note per run, at most {MAX_NOTE_CHARS} characters.")
    _common(note)
    note.add_argument("text", metavar="TEXT")

    archive = commands.add_parser(
        "archive", help="hide a run from runs, best and the filter (--undo shows it again)",
        description="Archived runs keep all their data; `runstream runs --archived` and `best --archived` show them.")
    _common(archive)
    archive.add_argument("--undo", action="store_true", help="unarchive the run")

    delete = commands.add_parser(
        "delete", help="delete a run's rows from every table (needs --yes); an audit row stays",
        description="Removes the run's rows from every table that has a run_id column (ClickHouse lightweight "
        "DELETE; docs/storage.md) and writes an audit row to run_deletions. Without --yes, prints what would be "
        "deleted and changes nothing.")
    _common(delete)
    delete.add_argument("--yes", action="store_true", help="really delete")


def _connect(args: argparse.Namespace) -> tuple[Any, str]:
    from runstream.consumer.clickhouse_settings import connect_clickhouse
    from runstream.consumer.migrations import require_migrated

    client, database = connect_clickhouse(args)
    require_migrated(client, database)
    return client, database


def _kafka(args: argparse.Namespace) -> tuple[Any | None, str]:
    """Kafka settings (None: not configured) and the topic prefix, as every Kafka-using command resolves them."""
    from runstream.cli import _kafka_options, _producer_topic_prefix
    from runstream.producer.kafka_settings import KafkaSettings

    kafka = KafkaSettings.resolve(args.kafka, _kafka_options(args.kafka_option), config_file=args.config)
    return kafka, _producer_topic_prefix(args)


def _run_command(args: argparse.Namespace, action: str, **change: Any) -> int:
    from runstream.output import render

    kafka, prefix = _kafka(args)
    client, database = _connect(args)
    try:
        done = curate(client, database, args.run, action, kafka=kafka, topic_prefix=prefix, wait_s=args.wait,
                      **change)
    finally:
        client.close()
    print(render(ROW_COLUMNS, [done.row()], args.format))
    if done.visible is False:
        import sys

        print(f"runstream {args.command}: sent, but not applied within {args.wait:g} s (is a consumer running?)",
              file=sys.stderr)
        return 1
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    return _run_command(args, "tag", tags=parse_tag_args(args.tags), remove=args.remove)


def cmd_note(args: argparse.Namespace) -> int:
    return _run_command(args, "note", note=args.text)


def cmd_archive(args: argparse.Namespace) -> int:
    return _run_command(args, "unarchive" if args.undo else "archive")


def cmd_delete(args: argparse.Namespace) -> int:
    import sys

    from runstream.output import render

    if not args.yes:
        client, database = _connect(args)
        try:
            run_id, run_name, counts = deletion_preview(client, database, args.run)
        finally:
            client.close()
        rows = [[table, n] for table, n in counts.items() if n]
        print(render(["table", "rows"], rows, args.format))
        print(f"runstream delete: run {run_id} ({run_name}) NOT deleted: {sum(counts.values())} rows in "
              f"{len(rows)} tables would be; run again with --yes to delete them", file=sys.stderr)
        return 1
    return _run_command(args, "delete")


COMMANDS = {"tag": cmd_tag, "note": cmd_note, "archive": cmd_archive, "delete": cmd_delete}


# -- runstream.Client ----------------------------------------------------------------------------

def curate_via(client: Any, database: str, run: str, action: str, *, kafka: str | None = None,
               topic_prefix: str | None = None, wait: float | None = None, **change: Any) -> dict[str, Any]:
    """`curate` for `runstream.Client`: Kafka from `kafka` (bootstrap servers), else RUNSTREAM_KAFKA and the
    config file (RUNSTREAM_CONFIG) as for every client; the topic prefix from `topic_prefix`, else the
    producer settings. Returns what was done as a dict."""
    from runstream.producer.kafka_settings import KafkaSettings
    from runstream.producer.settings import ProducerSettings

    settings = KafkaSettings.resolve(kafka)
    prefix = ProducerSettings.load({"topic_prefix": topic_prefix}).topic_prefix
    done = curate(client, database, run, action, kafka=settings, topic_prefix=prefix, wait_s=wait, **change)
    return {"run_id": done.run_id, "name": done.run_name, "action": done.action, "event_id": done.event_id,
            "tags": dict(done.state.tags), "note": done.state.note, "archived": done.state.archived,
            "via": done.via, "visible": done.visible, "rows_deleted": done.rows_deleted}


def tags_argument(tags: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """The Client's `tags`: a mapping, or a list of keys (empty values), as `init(tags=...)` takes them."""
    if tags is None:
        return {}
    if isinstance(tags, str):
        raise ValueError(f"tags: expected a mapping or a list of keys, got the string {tags!r}")
    if isinstance(tags, Mapping):
        return dict(tags)
    return dict.fromkeys(tags, "")
