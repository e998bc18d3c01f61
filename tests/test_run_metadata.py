"""What a run records beyond metrics: params added later, data versions, code version, ranks, resume."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from spool_reader import spooled

import runstream
from runstream.consumer import ClickHouseSink, ingest_spool


def test_params_and_data_versions_logged_later_are_stored(tmp_path: Path, clickhouse_dsn: str) -> None:
    data = tmp_path / "train.csv"
    data.write_text("x,y\n1,2\n")
    digest = runstream.hash_path(data)
    run = runstream.init("meta", params={"lr": 0.1, "epochs": 3}, spool=str(tmp_path / "spool"), sample_interval=0)
    run.log_params({"lr": 0.05, "sched": {"warmup": 100}})
    run.log_data_version("train", version="2026-11", uri=str(data), digest=digest)
    with pytest.raises(TypeError, match="data version 'x': version must be a string, got int"):
        run.log_data_version("x", version=3)  # type: ignore[arg-type]
    run.finish()

    sink = ClickHouseSink(clickhouse_dsn)
    ingest_spool(tmp_path / "spool", sink)
    params = dict(sink.client.query(f"SELECT key, value_string FROM {sink.database}.run_params FINAL").result_rows)
    assert params == {"lr": "0.05", "epochs": "3", "sched.warmup": "100"}, "a later value replaces the first"
    versions = sink.client.query(f"SELECT name, version, digest FROM {sink.database}.run_data_versions FINAL"
                                 ).result_rows
    assert versions == [("train", "2026-11", digest)]


def test_hash_path_covers_names_and_bytes_and_refuses_oversized_input(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.bin").write_bytes(b"\x00" * 3000)
    (folder / "b.txt").write_text("hello")
    first = runstream.hash_path(folder)
    assert first.startswith("sha256:") and first == runstream.hash_path(folder)
    (folder / "b.txt").rename(folder / "c.txt")
    assert runstream.hash_path(folder) != first, "a renamed file changes the digest"
    with pytest.raises(ValueError, match="3005 bytes exceeds max_bytes=100"):
        runstream.hash_path(folder, max_bytes=100)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runstream.hash_path(tmp_path / "missing")
    shown = StringIO()
    runstream.hash_path(folder, progress=True, stream=shown)
    assert "100%" in shown.getvalue()


def test_code_version_scheduler_and_ranks_are_recorded(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    (repo / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "train.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    (repo / "train.py").write_text("print(2)\n")  # uncommitted change: the run is dirty
    script = (
        "import runstream\n"
        f"run = runstream.init('meta', spool={str(tmp_path / 'spool')!r}, sample_interval=0)\n"
        "run.log({'loss': 1.0}, step=0)\n"
        "run.finish()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "4242", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4",
           "TORCHELASTIC_RUN_ID": "job-7", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, check=True)
    [started] = spooled(tmp_path / "spool", "run_started")
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert started["git"]["commit"] == head and started["git"]["branch"] == "main"
    assert started["git"]["dirty"] is True and len(started["git"]["diff_sha256"]) == 64
    assert (started["rank"], started["local_rank"], started["world_size"]) == (0, 0, 4)
    assert started["scheduler"] == {"slurm_job_id": "4242", "torchelastic_run_id": "job-7"}


def test_ranks_of_one_job_share_a_run_and_only_rank_0_logs_metrics(tmp_path: Path) -> None:
    script = (
        "import runstream\n"
        f"run = runstream.init('ddp', spool={str(tmp_path)!r}, sample_interval=0.05)\n"
        "run.log({'loss': 1.0}, step=0)\n"
        "run.finish()\n"
        "print(run.run_id)\n"
    )
    ids = []
    for rank in (0, 1):
        env = {"PATH": "/usr/bin:/bin", "RANK": str(rank), "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc",
               "HOME": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        ids.append(done.stdout.strip())
    assert ids[0] == ids[1], "both ranks derive the same run id from the launcher's job id"
    assert len(spooled(tmp_path, "run_started")) == 1 and len(spooled(tmp_path, "run_finished")) == 1
    assert sum(len(b["steps"]) for b in spooled(tmp_path, "metric_steps")) == 1, "rank 1's log() is not recorded"
    samples = spooled(tmp_path, "gpu_samples")
    assert len({s["event_id"] for s in samples}) >= 4, "both ranks sampled (at least a first and last each)"
    assert not list(tmp_path.rglob("*.open")), "rank 1's files are sealed without a run_finished of its own"


def test_resume_continues_the_same_run_id(tmp_path: Path) -> None:
    first = runstream.init("meta", spool=str(tmp_path), sample_interval=0)
    first.log({"loss": 1.0}, step=0)
    first.finish("killed")
    again = runstream.init("meta", resume=first.run_id, spool=str(tmp_path), sample_interval=0)
    again.log({"loss": 0.5}, step=1)
    again.finish()
    starts = spooled(tmp_path, "run_started")
    assert [s["run_id"] for s in starts] == [first.run_id] * 2
    assert [s["resumed"] for s in starts] == [False, True]
    with pytest.raises(ValueError, match="run id 'nope': expected a UUID"):
        runstream.init("meta", resume="nope", spool=str(tmp_path), sample_interval=0)
