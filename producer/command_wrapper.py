"""`runstream run`: track an unmodified command (a training script) as a run.

This module owns everything between the wrapper and its child process: typing `--param` and
`--tag` text, the metric pattern that turns stdout lines into metric points, passing the child's
output through, forwarding SIGTERM/SIGINT, and mapping how the child ended onto the run's status
and the wrapper's exit code:

- exit 0 -> `ok`; exit N -> `failed` with `exit_code` N; death by signal S, or the wrapper itself
  receiving SIGTERM/SIGINT -> `killed`. The wrapper exits with the child's code, 128+S for a death
  by signal (the shell's convention), so schedulers see what they would have seen without it.
- The child stays in the wrapper's process group, so a terminal's job control, stdin and
  interactive debuggers behave as without the wrapper. That is also why a SIGINT is not forwarded
  while the wrapper holds the terminal's foreground: the terminal already sent Ctrl-C to the
  whole group, and a second SIGINT would interrupt the child's own clean-up.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from runstream.producer.gpu import NvmlGpus
from runstream.producer.host import HostReader
from runstream.producer.params import ParamValue, check_key
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CANNOT_EXECUTE = 126  # the shell's codes for "found but not runnable" and "not found"
EXIT_NOT_FOUND = 127
DRAIN_TIMEOUT_S = 5.0
_READ_SIZE = 65536
_MAX_PARSED_LINE = 1 << 20  # longer "lines" (binary output, no newline) are passed through, not parsed
_LINE_END = re.compile(rb"\r\n|\r|\n")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


# --- typing the command line's text --------------------------------------------------------------


def parse_value(text: str) -> ParamValue:
    """Type a `--param` value the way a reader of the command line would: `10` is an int, `0.01` and
    `3e-4` are floats, `true`/`false` are bools, everything else (`adamw`, `nan`, `1_000`) stays text,
    so that comparing runs in SQL compares numbers as numbers."""
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_params(items: Sequence[str]) -> dict[str, ParamValue]:
    """`["lr=0.01", "optim.name=adamw"]` -> `{"lr": 0.01, "optim.name": "adamw"}`; a later key wins."""
    params: dict[str, ParamValue] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE (e.g. lr=0.01)")
        if not key.strip():
            raise ValueError(f"--param {item!r}: the key before '=' is empty")
        try:
            check_key("param", key)
        except ValueError as error:
            raise ValueError(f"--param {item!r}: {error}") from None
        params[key] = parse_value(value)
    return params


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    """Tags are a string map: `team=vision` sets a value, a bare `baseline` is a tag with an empty one."""
    tags: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise ValueError(f"--tag {item!r}: the tag name is empty")
        tags[key] = value
    return tags


# --- metrics from stdout ---------------------------------------------------------------------------


class MetricLineError(ValueError):
    """A matching line with a value that is not a number; `field` is the group it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ParsedLine:
    step: int | None
    values: dict[str, float]


class MetricPattern:
    """A regular expression whose named groups are metric values, plus the optional group `step`.

    It is compiled and checked before the command starts, so a typo fails in a second rather than
    after a night of training that recorded no metrics.
    """

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"--metric-pattern {pattern!r}: invalid regular expression: {error}") from None
        self.pattern = pattern
        self.metrics = tuple(name for name in self.regex.groupindex if name != "step")
        if not self.metrics:
            raise ValueError(
                f"--metric-pattern {pattern!r}: no named group for a metric value; name one, e.g. "
                r"'step=(?P<step>\d+) loss=(?P<loss>[0-9.eE+-]+)' (the group 'step' alone is the step)"
            )
        for name in self.metrics:
            try:
                check_key("metric", name)
            except ValueError as error:
                raise ValueError(f"--metric-pattern {pattern!r}: {error}") from None

    def parse(self, line: str) -> ParsedLine | None:
        """The metrics of a line, None when it does not match; MetricLineError naming the field and the
        text when it matches but a value is not a number (the caller decides how loudly to say so)."""
        match = self.regex.search(line)
        if match is None:
            return None
        step: int | None = None
        step_text = match.group("step") if "step" in self.regex.groupindex else None
        if step_text is not None:
            try:
                step = int(step_text)
            except ValueError:
                raise MetricLineError("step", f"step: expected an integer, got {step_text!r}") from None
        values: dict[str, float] = {}
        for name in self.metrics:
            text = match.group(name)
            if text is None:  # an optional group that did not take part in the match
                continue
            try:
                values[name] = float(text)
            except ValueError:
                where = f" at step {step}" if step is not None else ""
                raise MetricLineError(name, f"metric {name!r}{where}: expected a number, got {text!r}") from None
        return ParsedLine(step, values) if values else None


class _StderrWriter:
    """One lock for the wrapper's stderr, shared by the child's stderr and the wrapper's own notes,
    so that a note never lands in the middle of a chunk of the child's output."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        with self.lock:
            try:
                self.stream.write(f"runstream run: {text}\n".encode())
                self.stream.flush()
            except (OSError, ValueError):
                pass


class _MetricLogger:
    """Feeds parsed lines to the run from the stdout pump; each kind of problem is reported once,
    because a training loop repeats the same bad line thousands of times."""

    def __init__(self, run: Run, pattern: MetricPattern, stderr: _StderrWriter) -> None:
        self._run = run
        self._pattern = pattern
        self._stderr = stderr
        self._lock = threading.Lock()
        self._closed = False
        self._reported: set[str] = set()

    def on_line(self, raw: bytes) -> None:
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace")
        try:
            parsed = self._pattern.parse(line)
        except MetricLineError as error:
            self._skip(error.field, str(error))
            return
        if parsed is None:
            return
        with self._lock:
            if self._closed:
                return
            try:
                self._run.log(parsed.values, step=parsed.step)
            except (TypeError, ValueError) as error:  # the SDK's own checks, e.g. a negative step
                self._skip(f"log: {type(error).__name__}", str(error))

    def _skip(self, kind: str, problem: str) -> None:
        if kind in self._reported:
            return
        self._reported.add(kind)
        self._stderr.note(f"{problem}; line skipped (later lines with this problem are skipped silently)")

    def close(self) -> None:
        """After this no point is logged: the run is about to finish, and a finished run refuses points."""
        with self._lock:
            self._closed = True


def _pump(source: IO[bytes], sink: IO[bytes], lock: threading.Lock | None,
          on_line: Callable[[bytes], None] | None) -> None:
    """Copy the child's output to ours as it arrives, and hand complete lines to `on_line`.

    Chunks are passed on as read, not line by line: a progress bar redraws its line with '\\r' and
    would otherwise only show once finished. For parsing, '\\r' ends a line too, for the same
    reason. If our own output is closed (`| head`), the pipe is still drained so the child never
    blocks on a full pipe, and metrics are still parsed.
    """
    fd = source.fileno()
    passing = True
    pending = b""
    while True:
        try:
            chunk = os.read(fd, _READ_SIZE)
        except OSError:
            break
        if not chunk:
            break
        if passing:
            try:
                if lock is None:
                    sink.write(chunk)
                    sink.flush()
                else:
                    with lock:
                        sink.write(chunk)
                        sink.flush()
            except (OSError, ValueError):
                passing = False
        if on_line is not None:
            pending += chunk
            *lines, pending = _LINE_END.split(pending)
            for line in lines:
                on_line(line)
            if len(pending) > _MAX_PARSED_LINE:
                pending = b""
    if on_line is not None and pending:
        on_line(pending)
    source.close()


# --- the run and the child -------------------------------------------------------------------------


class _WrappedRun(Run):
    """A Run whose `command_line` is the wrapped command: `runstream run ... --` says nothing about the
    experiment, and the wrapped command is what someone reruns to reproduce it."""

    def __init__(self, command: Sequence[str], **kwargs: Any) -> None:
        self._wrapped_command = list(command)  # read by _started_record, which Run.__init__ calls
        super().__init__(**kwargs)

    def _started_record(self, gpu_inventory: dict[str, Any] | None) -> dict[str, Any]:
        record = super()._started_record(gpu_inventory)
        record["command_line"] = list(self._wrapped_command)
        return record


def _process_tree_gpus() -> NvmlGpus:
    """GPU memory is the child's, not the wrapper's: count every process below the wrapper."""
    try:
        return NvmlGpus(process_ids=HostReader().process_ids)
    except Exception as error:  # psutil failing: per-process GPU memory is then the wrapper's alone
        log.debug("runstream: cannot list the wrapped command's processes: %s", error)
        return NvmlGpus()


def _terminal_sent_it_to_the_child(child_pid: int | None) -> bool:
    """Whether a SIGINT we got was most likely Ctrl-C, already delivered by the terminal to the child:
    true when our process group is the terminal's foreground group and the child is still in it
    (`child_pid` None: a child that has already ended, which was in it).

    A child that no longer exists counts as one that has ended: when our main thread runs late (a loaded
    machine), its wait may already have reaped the child when this handler runs, before `Popen` has
    recorded the return code."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False  # no controlling terminal (a scheduler, a container, a test): someone used kill
    try:
        ours = os.getpgrp()
        return os.tcgetpgrp(fd) == ours and (child_pid is None or os.getpgid(child_pid) == ours)
    except ProcessLookupError:  # only getpgid raises it (ESRCH): the child, reaped
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class _Supervisor:
    """Starts the child, forwards signals to it, and remembers which ones the wrapper received."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.received: list[int] = []
        self._pending: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("runstream: run_command outside the main thread; signals are not forwarded")
            return
        for signum in FORWARDED_SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Python runs handlers in the main thread between bytecodes, so `self.child` is either still
        # None (start() forwards the signal once the child exists) or set (forward now), never both.
        self.received.append(signum)
        if self.child is None:
            self._pending.append(signum)
        else:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        child = self.child
        if child is None:
            return
        # A child that handled the terminal's Ctrl-C may have ended (and been reaped) before this handler ran:
        # the signal still came from the terminal, and the log says so either way.
        ended = child.returncode is not None
        if signum == signal.SIGINT and _terminal_sent_it_to_the_child(None if ended else child.pid):
            log.info("runstream: SIGINT not forwarded: the terminal sent it to the command as well")
            return
        try:
            child.send_signal(signum)  # a no-op once the child is reaped, so never a recycled pid
        except OSError as error:
            log.debug("runstream: could not forward %s: %s", _signal_name(signum), error)

    def start(self, command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=dict(env), bufsize=0)
        pending, self._pending = self._pending, []
        for signum in pending:  # received while the child was being started
            self._forward(signum)
        return self.child


def _child_env() -> dict[str, str]:
    """The wrapper's environment, plus PYTHONUNBUFFERED: a Python child writing to a pipe would
    otherwise hold its prints back in 8 KiB blocks, and metrics (and the user) would see them late."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_command(
    command: Sequence[str],
    *,
    project: str,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    metric_pattern: str | None = None,
    settings: ProducerSettings | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    resume: str | None = None,
) -> int:
    """Run `command` as a tracked run and return the exit code the wrapper should exit with.

    Bad input (no command, a bad pattern, bad settings) raises ValueError before anything starts.
    A command that cannot be started still ends its run, as `failed`, and returns 127 (not found)
    or 126 (not executable), like a shell.
    """
    command = list(command)
    if not command:
        raise ValueError("command: nothing to run; usage: runstream run [OPTIONS] -- COMMAND [ARGS...]")
    pattern = MetricPattern(metric_pattern) if metric_pattern is not None else None
    settings = settings or ProducerSettings.resolve()
    out = stdout if stdout is not None else sys.stdout.buffer
    err = _StderrWriter(stderr if stderr is not None else sys.stderr.buffer)

    gpus = _process_tree_gpus() if settings.sample_interval_s > 0 else None
    run = _WrappedRun(command, project=project, name=name, params=params, tags=tags, settings=settings, gpus=gpus,
                      resume=resume)  # RUN_ID or "auto" (producer/resume.py)
    supervisor = _Supervisor()
    supervisor.install()
    try:
        try:
            child = supervisor.start(command, _child_env())
        except OSError as error:
            code = EXIT_NOT_FOUND if isinstance(error, FileNotFoundError) else EXIT_CANNOT_EXECUTE
            reason = f"cannot start {command[0]!r}: {error.strerror or error}"
            err.note(f"error: {reason}")
            run.finish("failed", exit_code=code, error=reason)
            return code
        metrics = _MetricLogger(run, pattern, err) if pattern is not None else None
        assert child.stdout is not None and child.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(child.stdout, out, None, metrics.on_line if metrics else None),
                             name="runstream-stdout", daemon=True),
            threading.Thread(target=_pump, args=(child.stderr, err.stream, err.lock, None),
                             name="runstream-stderr", daemon=True),
        ]
        for pump in pumps:
            pump.start()
        returncode = child.wait()
        for pump in pumps:  # EOF follows exit, unless a grandchild still holds the pipes open
            pump.join(drain_timeout_s)
        if metrics is not None:
            metrics.close()
        status, exit_code, error_text = _outcome(returncode, supervisor.received, command[0])
        run.finish(status, exit_code=exit_code, error=error_text)
        return exit_code
    finally:
        supervisor.restore()


def _outcome(returncode: int, received: Sequence[int], program: str) -> tuple[str, int, str | None]:
    """(status, exit code, error) for how the child ended and what the wrapper was sent meanwhile."""
    if returncode < 0:
        return "killed", 128 - returncode, f"signal {_signal_name(-returncode)}"
    if received:
        return "killed", returncode, f"signal {_signal_name(received[0])}"
    if returncode == 0:
        return "ok", 0, None
    return "failed", returncode, f"{program} exited with code {returncode}"
