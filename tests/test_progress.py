"""Progress (runstream.progress): on stderr when it is a terminal or when asked, never on stdout.

The terminal is a real pseudo-terminal (`pty.openpty`): a command run with its stderr on the pty's
slave side shows its bar there; the same command with stderr on a pipe shows nothing unless asked
(`--progress`, RUNSTREAM_PROGRESS=1); its stdout is the same bytes in every case.
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import runstream
from runstream import progress
from runstream.cli import build_parser


def _drain(fd: int, into: bytearray) -> None:
    """Read a pty's master side until the slave side is closed everywhere (Linux then reports EIO)."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        into.extend(chunk)


def run_cli(*args: str, stderr_on_pty: bool, env: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """`runstream ARGS` in its own process: (stdout, stderr) bytes; stdout is always a pipe."""
    environ = {k: v for k, v in os.environ.items() if k != progress.ENV} | (env or {})
    command = [sys.executable, "-m", "runstream.cli", *args]
    if not stderr_on_pty:
        done = subprocess.run(command, capture_output=True, env=environ, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout, done.stderr
    master, slave = pty.openpty()
    seen = bytearray()
    reader = threading.Thread(target=_drain, args=(master, seen), daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=environ)
        os.close(slave)
        stdout, _ = proc.communicate(timeout=120)
        reader.join(timeout=30)
        assert not reader.is_alive(), "the pty was not closed by the command's exit"
    finally:
        os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    return stdout, bytes(seen)


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two offline runs' spool files, logged through the SDK."""
    folder = tmp_path_factory.mktemp("progress-spool")
    saved = os.environ.pop("RUNSTREAM_KAFKA", None)  # offline: the spool, whatever the shell says
    try:
        for name in ("a", "b"):
            run = runstream.init("progress", name, params={"lr": 0.1}, spool=str(folder), sample_interval=0)
            for step in range(200):
                run.log({"loss": 1.0 / (step + 1), "acc": step / 200}, step=step)
            run.finish()
    finally:
        if saved is not None:
            os.environ["RUNSTREAM_KAFKA"] = saved
    yield folder


def test_ingest_shows_its_bar_on_a_terminal_only_and_stdout_never_changes(spool: Path, tmp_path: Path) -> None:
    def ingest(case: str, *extra: str, pty_: bool, env: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        return run_cli("ingest", str(spool), "--clickhouse", f"chdb://{tmp_path / case}", *extra,
                       stderr_on_pty=pty_, env=env)

    on_terminal_out, on_terminal_err = ingest("tty", pty_=True)
    piped_out, piped_err = ingest("pipe", pty_=False)
    asked_out, asked_err = ingest("asked", "--progress", pty_=False)
    by_env_out, by_env_err = ingest("env", pty_=False, env={progress.ENV: "1"})

    assert b"ingested " in on_terminal_out and b"2 runs" not in on_terminal_out
    assert on_terminal_out == piped_out == asked_out == by_env_out, "stdout carries results only"
    assert b"progress" not in piped_out and b"\r" not in piped_out
    for shown in (on_terminal_err, asked_err, by_env_err):
        text = shown.decode()
        assert "ingest: 100%" in text and " files" in text, text
    assert piped_err == b"", "a pipe gets no progress unless asked"


def test_no_progress_wins_over_a_terminal(spool: Path, tmp_path: Path) -> None:
    out, err = run_cli("ingest", str(spool), "--clickhouse", f"chdb://{tmp_path / 'db'}", "--no-progress",
                       stderr_on_pty=True)
    assert b"ingested " in out and b"ingest:" not in err and b"\r" not in err


def test_wanted_argument_over_environment_over_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:
            monkeypatch.delenv(progress.ENV, raising=False)
            assert progress.wanted(None, terminal) and not progress.wanted(None, io.StringIO())
            assert not progress.wanted(False, terminal) and progress.wanted(True, io.StringIO())
            monkeypatch.setenv(progress.ENV, "0")
            assert not progress.wanted(None, terminal) and progress.wanted(True, terminal)
            monkeypatch.setenv(progress.ENV, "yes")
            assert progress.wanted(None, io.StringIO()) and not progress.wanted(False, io.StringIO())
            monkeypatch.setenv(progress.ENV, "")  # set but empty: as if unset
            assert progress.wanted(None, terminal) and not progress.wanted(None, io.StringIO())
            monkeypatch.setenv(progress.ENV, "sometimes")
            with pytest.raises(ValueError, match=r"environment RUNSTREAM_PROGRESS: .*got 'sometimes'"):
                progress.wanted(None, io.StringIO())
    finally:
        os.close(slave)
        os.close(master)


def test_stages_wait_for_the_delay_then_name_the_stage_and_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    master, slave = pty.openpty()
    seen = bytearray()
    reader = threading.Thread(target=_drain, args=(master, seen), daemon=True)
    reader.start()
    try:
        with open(slave, "w", closefd=False) as terminal:
            with progress.Stages("runstream best", delay=30, stream=terminal) as quick:
                quick.step("ranking")
            assert quick.shown
            with progress.Stages("runstream report", delay=0.05, stream=terminal) as slow:
                slow.step("curve of loss")
                deadline = time.monotonic() + 20
                while b"curve of loss" not in seen:  # drawn by the ticker thread once the delay passed
                    assert time.monotonic() < deadline, bytes(seen)
                    threading.Event().wait(0.05)
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    text = seen.decode()
    assert "runstream best" not in text, "an answer quicker than the delay prints nothing"
    assert "runstream report: curve of loss ... 00:0" in text and "runstream report: done in" in text, text
    piped = io.StringIO()
    with progress.Stages("runstream runs", delay=0, stream=piped) as unasked:
        unasked.step("querying")
    assert piped.getvalue() == "" and not unasked.shown


def test_hashing_bar_only_when_asked_or_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(progress.ENV, raising=False)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    quiet, asked = io.StringIO(), io.StringIO()
    digest = runstream.hash_path(data, stream=quiet)
    assert runstream.hash_path(data, progress=True, stream=asked) == digest
    assert quiet.getvalue() == ""
    assert f"hashing {data}: 100%" in asked.getvalue() and "3.00M/3.00M" in asked.getvalue()


def test_every_long_command_takes_progress_flags() -> None:
    parser = build_parser()
    long_commands = (
        ["ingest", "SPOOL"], ["sync", "SPOOL"], ["demo"], ["runs"], ["compare", "r1"], ["reproduce", "r1"],
        ["best", "--project", "p", "--metric", "m"], ["importance", "--project", "p", "--metric", "m"],
        ["report", "--project", "p"],
    )
    for argv in long_commands:
        assert parser.parse_args(argv).progress is None
        assert parser.parse_args([*argv, "--progress"]).progress is True
        assert parser.parse_args([*argv, "--no-progress"]).progress is False
