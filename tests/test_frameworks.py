"""The Lightning logger and the Hugging Face Trainer callback, driven by the real frameworks on CPU.

torch, Lightning, transformers and Optuna live in an environment of their own (scripts/frameworks_env.sh,
.cache/frameworks-venv: about 4.1 GB, built once and reused while its pins stay the same; `make test` builds
it before pytest, and the first test here builds it if it is missing). The training jobs
(tests/framework_jobs.py) run with that interpreter as subprocesses, each on a tiny model built there from
random weights and synthetic data (nothing is downloaded), logging to a spool folder; each writes its own
record of what the framework handed over. The spool is ingested into chDB, and what is stored is compared
with that record, with and without FINAL:

- Lightning: every metric at every step, the module's hyperparameters, the declared goals (`metrics=` and
  the ModelCheckpoint's monitor/mode), and a second process resuming from the Lightning checkpoint that
  continues the same run as attempt 2.
- Hugging Face: the Trainer's loss, learning rate, grad norm and eval metrics at their global steps, its
  arguments as params (the hub token masked), eval_accuracy's goal from `metric_for_best_model`. This job
  sends to the real Kafka broker (tests/conftest.py) and the consumer service stores it; the others
  go through the spool and `runstream ingest`'s path (ingest_spool). `Trainer.hyperparameter_search`
  (Optuna, 2 trials): a run per trial, with the trial's learning rate and its own points.
- DDP: 2 CPU processes under torchrun (gloo), Lightning's DDP strategy, `log_all_ranks`: each rank's
  losses with its rank and node, and each rank's gradient-norm histograms, whose stored counts equal
  numpy's histogram of the values the process binned.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from consuming import consume_until
from databases import fresh_database_dsn

import runstream
from runstream.consumer import ClickHouseSink, ingest_spool
from runstream.consumer.dsn import connect
from runstream.monitoring.metric_direction import declared_goals

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
JOBS = Path(__file__).resolve().parent / "framework_jobs.py"
#: One job's limit: a tiny model trains in seconds; importing torch on a loaded 2-core machine takes most of it.
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def frameworks_python() -> str:
    """The frameworks' interpreter; the script returns at once when the environment is current."""
    built = subprocess.run(["bash", str(REPO / "scripts" / "frameworks_env.sh")], capture_output=True, text=True,
                           check=False, timeout=1800)
    if built.returncode != 0:
        pytest.fail(f"scripts/frameworks_env.sh failed (exit {built.returncode}):\n{built.stderr[-4000:]}",
                    pytrace=False)
    return built.stdout.strip().splitlines()[-1]


def run_job(python: str, *arguments: str, launcher: tuple[str, ...] = (),
            extra_env: dict[str, str] | None = None) -> None:
    """A job in the frameworks' interpreter; the environment is the test's less anything that would send
    the job's runs elsewhere (a broker, a shared run id, every-rank logging), plus `extra_env`."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RUNSTREAM_KAFKA", "RUNSTREAM_RUN_ID", "RUNSTREAM_LOG_ALL_RANKS", "RUNSTREAM_TOPIC_PREFIX")}
    env.update({"HF_HUB_OFFLINE": "1", "RUNSTREAM_HEARTBEAT_INTERVAL": "0", "PYTHONWARNINGS": "ignore",
                "OMP_NUM_THREADS": "1", **(extra_env or {})})
    done = subprocess.run([python, *launcher, str(JOBS), *arguments], env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{arguments[0]} job failed (exit {done.returncode}):\n{done.stderr[-6000:]}"


@dataclass
class Stored:
    """A spool ingested into a database of its own."""

    dsn: str
    client: Any
    database: str

    def rows(self, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in
                self.client.query(sql.replace("{db}", self.database), parameters=parameters).result_rows]

    def points(self, run_id: str, final: str, table: str = "metric_points", rank: int | None = None
               ) -> list[tuple[int, str, float]]:
        where = "" if rank is None else f" AND rank = {int(rank)}"
        return sorted(self.rows(f"SELECT step, toString(metric), value FROM {{db}}.{table} {final} "  # noqa: S608
                                f"WHERE run_id = {{r:String}}{where}", r=run_id))


def stored_at(dsn: str) -> Stored:
    client, database = connect(dsn)
    return Stored(dsn, client, database)


def ingest(spool: Path, clickhouse_base: str, prefix: str) -> Stored:
    """`runstream ingest`'s path: the spool files through the consumer's sink."""
    dsn = fresh_database_dsn(clickhouse_base, prefix)
    report = ingest_spool(spool, ClickHouseSink(dsn))
    assert report.rejected == [], report.rejected
    return stored_at(dsn)


def logged_points(points: list[list[Any]]) -> list[tuple[int, str, float]]:
    """The job's record as (step, metric, value) rows, in the order logged."""
    return [(int(step), name, value) for step, values in points for name, value in values.items()]


def final_view(rows: list[tuple[int, str, float]]) -> list[tuple[int, str, float]]:
    """What FINAL keeps: the last value logged at each (step, metric)."""
    last: dict[tuple[int, str], float] = {}
    for step, name, value in rows:
        last[(step, name)] = value
    return sorted((step, name, value) for (step, name), value in last.items())


def params_of(stored: Stored, run_id: str) -> dict[str, Any]:
    return {key: (number if kind != "string" else text) for key, kind, number, text in stored.rows(
        "SELECT key, toString(value_type), value_number, value_string FROM {db}.run_params FINAL "
        "WHERE run_id = {r:String}", r=run_id)}


def definitions_of(stored: Stored, run_id: str) -> dict[str, tuple[str, list[str]]]:
    return {metric: (goal, list(summary)) for metric, goal, summary in stored.rows(
        "SELECT metric, goal, summary FROM {db}.metric_definitions FINAL WHERE run_id = {r:String}", r=run_id)}


# --- Lightning: fit, then resume from its checkpoint in a second process --------------------------------


@dataclass
class LightningRuns:
    stored: Stored
    first: dict[str, Any]
    resumed: dict[str, Any]
    root: Path


@pytest.fixture(scope="module")
def lightning_runs(frameworks_python: str, clickhouse_base: str,
                   tmp_path_factory: pytest.TempPathFactory) -> LightningRuns:
    work = tmp_path_factory.mktemp("lightning")
    spool, root = work / "spool", work / "root"
    run_job(frameworks_python, "lightning", str(work / "first.json"), str(spool), str(root))
    first = json.loads((work / "first.json").read_text())
    run_job(frameworks_python, "lightning", str(work / "resumed.json"), str(spool), str(root),
            first["run_id"], first["last_checkpoint"])
    resumed = json.loads((work / "resumed.json").read_text())
    return LightningRuns(ingest(spool, clickhouse_base, "lit"), first, resumed, root)


@pytest.mark.parametrize("final", ["FINAL", ""])
def test_lightning_metrics_are_what_lightning_logged_across_the_resume(lightning_runs: LightningRuns,
                                                                       final: str) -> None:
    first, resumed = lightning_runs.first, lightning_runs.resumed
    run_id = first["run_id"]
    assert resumed["run_id"] == run_id, "the resumed process logged into another run"
    assert (first["attempt"], resumed["attempt"], first["global_step"], resumed["global_step"]) == (1, 2, 8, 16)
    logged = logged_points(first["points"]) + logged_points(resumed["points"])
    names = {name for _, name, _ in logged}
    assert names == {"train_loss", "val_loss", "epoch"}
    stored = lightning_runs.stored.points(run_id, final)
    if final:
        assert stored == final_view(logged)
    else:  # before merges a step logged twice (epoch with each log call) may still be two rows of one value
        assert sorted(set(stored)) == sorted(set(logged))
    # the resumed attempt's steps carry its attempt number; the first attempt's stay
    attempts = lightning_runs.stored.rows(
        "SELECT attempt, min(step), max(step), count() FROM {db}.metric_points FINAL WHERE run_id = {r:String} "
        "GROUP BY attempt ORDER BY attempt", r=run_id)
    assert attempts == [(1, 0, 7, len(final_view(logged_points(first["points"])))),
                        (2, 8, 15, len(final_view(logged_points(resumed["points"]))))]


def test_lightning_run_params_checkpoint_folder_and_end(lightning_runs: LightningRuns) -> None:
    first = lightning_runs.first
    run_id = first["run_id"]
    stored = lightning_runs.stored
    assert stored.rows("SELECT count(), uniqExact(run_id) FROM {db}.runs") == [(1, 1)]
    params = params_of(stored, run_id)
    assert {key: params[key] for key in ("lr", "hidden", "dataset")} == {"lr": 0.05, "hidden": 16, "dataset":
                                                                           "synthetic"}
    assert first["params"] == {"lr": 0.05, "hidden": 16.0}  # what Lightning handed every logger
    # `version` is the run id: Lightning's default checkpoint folder names the run
    assert Path(first["last_checkpoint"]) == lightning_runs.root / "frameworks" / run_id / "checkpoints" / "last.ckpt"
    assert first["finished"] and lightning_runs.resumed["finished"]
    # the run's end is its latest attempt's (run_finishes keeps one per run)
    assert stored.rows("SELECT attempt, toString(status) FROM {db}.run_finishes FINAL WHERE run_id = {r:String}",
                       r=run_id) == [(2, "ok")]
    assert stored.rows("SELECT resumed, attempt FROM {db}.runs FINAL WHERE run_id = {r:String}", r=run_id) == [
        (True, 2)]


def test_lightning_goals_declared_through_the_logger_and_the_checkpoint(lightning_runs: LightningRuns) -> None:
    stored = lightning_runs.stored
    # train_loss from `metrics=`; val_loss from ModelCheckpoint(monitor="val_loss", mode="min")
    assert definitions_of(stored, lightning_runs.first["run_id"]) == {
        "train_loss": ("min", ["min", "last"]), "val_loss": ("min", [])}
    assert declared_goals(stored.client, stored.database) == {"train_loss": "min", "val_loss": "min"}


# --- Hugging Face Trainer --------------------------------------------------------------------------------


@dataclass
class TrainerRun:
    stored: Stored
    record: dict[str, Any]


@pytest.fixture(scope="module")
def trainer_run(frameworks_python: str, clickhouse_base: str, kafka_bootstrap: str,
                tmp_path_factory: pytest.TempPathFactory) -> TrainerRun:
    """This one goes through the real broker: the job sends to Kafka, the consumer service stores it."""
    from runstream.consumer import ConsumerService, ConsumerSettings

    work = tmp_path_factory.mktemp("huggingface")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    run_job(frameworks_python, "huggingface", str(work / "record.json"), str(work / "spool"), str(work / "out"),
            extra_env={"RUNSTREAM_KAFKA": kafka_bootstrap, "RUNSTREAM_TOPIC_PREFIX": prefix})
    record = json.loads((work / "record.json").read_text())
    sent = record["producer"]
    assert sent["sent_events"] > 0 and sent["rejected_events"] == sent["dropped_items"] == 0, sent
    dsn = fresh_database_dsn(clickhouse_base, "hf")
    service = ConsumerService(ConsumerSettings(kafka=kafka_bootstrap, clickhouse=dsn, topic_prefix=prefix))
    stats = consume_until(service, sent["sent_events"])
    assert stats.events == sent["sent_events"] and stats.dead_letters == 0, stats
    return TrainerRun(stored_at(dsn), record)


@pytest.mark.parametrize("final", ["FINAL", ""])
def test_trainer_loss_lr_and_eval_metrics_are_stored_at_their_steps(trainer_run: TrainerRun, final: str) -> None:
    record = trainer_run.record
    logged = logged_points(record["points"])
    names = {name for _, name, _ in logged}
    assert {"loss", "learning_rate", "grad_norm", "eval_loss", "eval_accuracy", "train_loss"} <= names
    assert sorted({step for step, name, _ in logged if name == "loss"}) == [2, 4, 6, 8]
    assert sorted({step for step, name, _ in logged if name == "eval_accuracy"}) == [4, 8]
    stored = trainer_run.stored.points(record["run_id"], final)
    if final:
        assert stored == final_view(logged)
    else:
        assert sorted(set(stored)) == sorted(set(logged))
    losses = np.array([value for _, name, value in logged if name == "loss"])
    got = trainer_run.stored.rows("SELECT count(), sum(value) FROM {db}.metric_points FINAL "
                                  "WHERE run_id = {r:String} AND metric = 'loss'", r=record["run_id"])
    assert got[0][0] == losses.size and got[0][1] == pytest.approx(float(losses.sum()), rel=1e-12)


def test_trainer_arguments_and_model_config_are_params_and_the_token_stays_out(trainer_run: TrainerRun) -> None:
    run_id = trainer_run.record["run_id"]
    params = params_of(trainer_run.stored, run_id)
    assert (params["learning_rate"], params["per_device_train_batch_size"], params["num_train_epochs"]) == (
        3e-4, 8, 2)
    assert (params["model.hidden_size"], params["model.num_hidden_layers"], params["dataset"]) == (16, 1, "synthetic")
    assert params["metric_for_best_model"] == "accuracy"
    assert params["hub_token"] == "<HUB_TOKEN>"  # noqa: S105  transformers masks it before the callback sees it
    assert trainer_run.stored.rows(
        "SELECT count() FROM {db}.run_params WHERE position(value_string, 'secret-token') > 0") == [(0,)]
    assert trainer_run.record["finished"]
    assert trainer_run.stored.rows("SELECT toString(status) FROM {db}.run_finishes WHERE run_id = {r:String}",
                                   r=run_id) == [("ok",)]


def test_trainer_declares_the_best_model_metrics_goal(trainer_run: TrainerRun) -> None:
    stored = trainer_run.stored
    assert definitions_of(stored, trainer_run.record["run_id"]) == {"eval_accuracy": ("max", [])}
    assert declared_goals(stored.client, stored.database) == {"eval_accuracy": "max"}


@pytest.fixture(scope="module")
def search_runs(frameworks_python: str, clickhouse_base: str,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Stored, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("search")
    spool = work / "spool"
    run_job(frameworks_python, "search", str(work / "record.json"), str(spool), str(work / "out"))
    trials = json.loads((work / "record.json").read_text())["trials"]
    return ingest(spool, clickhouse_base, "search"), trials


def test_a_hyperparameter_search_records_a_run_per_trial_with_its_params(
        search_runs: tuple[Stored, list[dict[str, Any]]]) -> None:
    """Trainer.hyperparameter_search (Optuna): on_train_begin once per trial, after the last trial's on_train_end."""
    stored, trials = search_runs
    assert len(trials) == 2 and len({trial["run_id"] for trial in trials}) == 2
    assert stored.rows("SELECT count() FROM {db}.runs FINAL WHERE run_name = 'bert-search'") == [(2,)]
    for trial in trials:
        run_id = trial["run_id"]
        assert trial["finished"]
        # the trial's suggestion wins over TrainingArguments' learning_rate
        assert params_of(stored, run_id)["learning_rate"] == trial["params"]["learning_rate"]
        assert stored.points(run_id, "FINAL") == final_view(logged_points(trial["points"]))
        assert stored.rows("SELECT toString(status) FROM {db}.run_finishes FINAL WHERE run_id = {r:String}",
                           r=run_id) == [("ok",)]


# --- DDP: 2 CPU processes, every rank logged, gradient-norm histograms ------------------------------------


@dataclass
class DdpRun:
    stored: Stored
    ranks: list[dict[str, Any]]


@pytest.fixture(scope="module")
def ddp_run(frameworks_python: str, clickhouse_base: str, tmp_path_factory: pytest.TempPathFactory) -> DdpRun:
    work = tmp_path_factory.mktemp("ddp")
    spool = work / "spool"
    # --standalone: a rendezvous on a port the OS picks; TORCHELASTIC_RUN_ID gives both ranks one run id
    run_job(frameworks_python, "ddp", str(work), str(spool), str(work / "root"),
            launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))
    ranks = [json.loads((work / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return DdpRun(ingest(spool, clickhouse_base, "ddp"), ranks)


def test_ddp_ranks_share_one_run_led_by_rank_0(ddp_run: DdpRun) -> None:
    zero, one = ddp_run.ranks
    assert zero["run_id"] == one["run_id"]
    assert [(r["sdk_rank"], r["sdk_node"], r["lead"]) for r in ddp_run.ranks] == [
        (0, zero["host"], True), (1, one["host"], False)]
    assert ddp_run.stored.rows("SELECT run_id, world_size FROM {db}.runs FINAL") == [(zero["run_id"], 2)]


@pytest.mark.parametrize("final", ["FINAL", ""])
def test_ddp_each_ranks_losses_are_stored_with_its_rank_and_node(ddp_run: DdpRun, final: str) -> None:
    zero, one = ddp_run.ranks
    run_id = zero["run_id"]
    stored = ddp_run.stored
    # each rank trains on its own shard: their losses differ, and each is stored as that rank logged it
    assert logged_points(zero["points"]) != logged_points(one["points"])
    for table, record in (("metric_points", zero), ("rank_metric_points", one)):
        got = stored.points(run_id, final, table)
        want = logged_points(record["points"])
        assert (got == final_view(want)) if final else (sorted(set(got)) == sorted(set(want))), table
    ranks_stored = stored.rows(f"SELECT rank, toString(node), uniqExact(metric, step) FROM {{db}}.rank_metric_points "  # noqa: S608
                               f"{final} WHERE run_id = {{r:String}} GROUP BY rank, node", r=run_id)
    assert ranks_stored == [(1, one["host"], len(final_view(logged_points(one["points"]))))]  # never rank 0's
    assert stored.rows("SELECT host FROM {db}.runs FINAL WHERE run_id = {r:String}", r=run_id) == [(zero["host"],)]
    losses = {rank: np.array([v for _, n, v in logged_points(r["points"]) if n == "train_loss"])
              for rank, r in enumerate(ddp_run.ranks)}
    with runstream.Client(stored.dsn) as client:
        spread = client.rank_spread(run_id, "train_loss", output="arrow").to_pylist()
    steps = sorted({s for s, n, _ in logged_points(zero["points"]) if n == "train_loss"})
    assert [row["step"] for row in spread] == steps
    for row, pair in zip(spread, np.column_stack([losses[0], losses[1]]), strict=True):
        assert row["ranks"] == 2
        assert (row["min"], row["max"]) == (pytest.approx(pair.min()), pytest.approx(pair.max()))
        assert row["max_rank"] == int(np.argmax(pair)) and row["max_node"] == ddp_run.ranks[row["max_rank"]]["host"]


def test_ddp_gradient_norm_histograms_count_what_each_rank_binned(ddp_run: DdpRun) -> None:
    run_id = ddp_run.ranks[0]["run_id"]
    with runstream.Client(ddp_run.stored.dsn) as client:
        stored = client.histograms(run_id, "grad/norm")
    by_key = {(h["rank"], h["step"]): h for h in stored}
    want = {(record["rank"], h["step"]): (record, h) for record in ddp_run.ranks for h in record["histograms"]}
    assert sorted(by_key) == sorted(want) and len(want) == 16  # 8 optimizer steps on each of 2 ranks
    for key, (record, logged) in want.items():
        got = by_key[key]
        values = np.array(logged["values"])
        edges = np.array(got["edges"])
        assert got["node"] == record["host"]
        assert list(got["counts"]) == np.histogram(values, bins=edges)[0].tolist() == logged["counts"], key
        assert sum(got["counts"]) == values.size == 16
        assert np.allclose(edges, logged["edges"], rtol=1e-12, atol=0)
        assert (got["nan_count"], got["neg_inf_count"], got["pos_inf_count"]) == (0, 0, 0)
    # without FINAL: one row per rank and step (nothing was logged twice)
    assert ddp_run.stored.rows("SELECT count(), uniqExact(rank, step) FROM {db}.metric_histograms "
                               "WHERE run_id = {r:String}", r=run_id) == [(16, 16)]



# --- declared goals given to the callback: checked at once (no torch needed) -----------------------------


def test_a_bad_goal_is_refused_when_the_callback_is_made(tmp_path: Path) -> None:
    """Before any training and before a run exists: the error names the metric and the value, nothing is sent."""
    from runstream.producer.integrations.huggingface import RunstreamCallback

    spool = tmp_path / "spool"
    with pytest.raises(ValueError, match=r"define_metric\('eval_accuracy'\): goal must be 'min', 'max' or None, "
                                         r"got 'up'"):
        RunstreamCallback("hfproj", metrics={"eval_accuracy": "up"}, spool=str(spool), sample_interval=0)
    assert not spool.exists() or not any(path.is_file() for path in spool.rglob("*"))


def test_a_handed_in_run_gets_the_callbacks_declared_goals(tmp_path: Path) -> None:
    from spool_reader import read_spool

    from runstream.producer.integrations.huggingface import RunstreamCallback

    spool = tmp_path / "spool"
    with runstream.init("hfproj", "owned", spool=str(spool), sample_interval=0) as run:
        callback = RunstreamCallback(run=run, metrics={"eval_f1": {"goal": "max", "summary": ["max"]}})
        assert callback.run is run
    [event] = [e for e in read_spool(spool)["metric_definitions"] if e["run_id"] == run.run_id]
    assert event["definitions"] == [{"metric": "eval_f1", "goal": "max", "summary": ["max"], "step_metric": None}]
