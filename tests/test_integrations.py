"""Framework integrations driven by the real frameworks, read back from the spool.

Keras 3 trains a tiny model for real on the JAX CPU backend. The Lightning logger and the Trainer
callback are tested with real torch training (fit, resume, DDP, a hyperparameter search) in
tests/test_frameworks.py, where torch lives in an environment of its own (scripts/frameworks_env.sh);
here the missing-framework errors are checked.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from spool_reader import read_spool

import runstream


def points(events: dict[str, list[dict[str, Any]]], run_id: str) -> list[tuple[int, str, float]]:
    return sorted(
        (step, batch["metric_names"][index], value)
        for batch in events.get("metric_steps", [])
        if batch["run_id"] == run_id
        for step, index, value in zip(batch["steps"], batch["metric_index"], batch["values"], strict=True)
    )


def params_of(events: dict[str, list[dict[str, Any]]], run_id: str) -> dict[str, Any]:
    [started] = [e for e in events["run_started"] if e["run_id"] == run_id]
    return {p["key"]: p["value"] for p in started["params"]}


def status_of(events: dict[str, list[dict[str, Any]]], run_id: str) -> dict[str, Any]:
    [finished] = [e for e in events["run_finished"] if e["run_id"] == run_id]
    return finished


# --- Keras 3 (JAX backend, CPU) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def keras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """Keras picks its backend when first imported; KERAS_HOME keeps it from writing ~/.keras."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "jax"))
        patch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
        import keras

        yield keras


def tiny_regression(keras: ModuleType, learning_rate: float = 0.01) -> tuple[Any, np.ndarray, np.ndarray]:
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)], name="tiny"
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse", metrics=["mae"])
    x = np.random.default_rng(7).random((32, 4), dtype=np.float32)
    return model, x, x.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_keras_fit_records_params_batch_and_epoch_metrics(keras: ModuleType, spool_dir: Path) -> None:
    from runstream.producer.integrations.keras import RunstreamKerasCallback

    model, x, y = tiny_regression(keras)
    callback = RunstreamKerasCallback(
        "kproj", "tiny-fit", params={"dataset": "toy"}, log_every_n_batches=3,
        spool=str(spool_dir), sample_interval=0,
    )
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:8], y[:8]), verbose=0, callbacks=[callback])
    assert callback.run is not None and callback.run.finished
    run_id = callback.run.run_id

    events = read_spool(spool_dir)
    params = params_of(events, run_id)
    assert params["optimizer.learning_rate"] == 0.01  # not 0.009999999776482582, its float32 value
    assert params["optimizer.name"] == "adam" and params["optimizer.beta_1"] == 0.9
    assert (params["epochs"], params["steps_per_epoch"], params["loss"]) == (2, 4, "mse")
    assert params["model.name"] == "tiny" and params["model.parameters"] == model.count_params() == 19
    assert params["dataset"] == "toy"

    logged = points(events, run_id)
    # epoch logs at steps 4 and 8 (4 batches an epoch) carry exactly what Keras's History holds
    for epoch, step in enumerate((4, 8)):
        at_step = {name: value for s, name, value in logged if s == step}
        assert at_step["epoch"] == epoch
        for name in ("loss", "mae", "val_loss", "val_mae"):
            assert at_step[name] == pytest.approx(history.history[name][epoch], rel=1e-6)
    # batch logs every 3rd step: 3 and 6 (running means, no validation yet)
    batch_steps = sorted({s for s, name, _ in logged if name == "loss"} - {4, 8})
    assert batch_steps == [3, 6]
    assert {name for s, name, _ in logged if s == 3} == {"loss", "mae"}
    assert all(math.isfinite(value) for _, _, value in logged)

    finished = status_of(events, run_id)
    assert finished["status"] == "ok"
    assert finished["summary"]["val_loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-6)


@pytest.mark.slow
def test_keras_callback_leaves_a_handed_in_run_to_its_owner(keras: ModuleType, spool_dir: Path) -> None:
    """A run used as a context manager records a fit that raised, which no Keras hook reports."""
    from runstream.producer.integrations.keras import RunstreamKerasCallback

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            raise RuntimeError("diverged")

    model, x, y = tiny_regression(keras, learning_rate=0.003)
    with pytest.raises(RuntimeError, match="diverged"):
        with runstream.init("kproj", "owned", params={"lr": 0.003}, spool=str(spool_dir), sample_interval=0) as run:
            model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                      callbacks=[RunstreamKerasCallback(run=run), StopAfterFirstEpoch()])
    events = read_spool(spool_dir)
    assert params_of(events, run.run_id) == {"lr": 0.003}  # the owner's params; the callback started nothing
    assert len(events["run_started"]) == 1
    assert {(s, name) for s, name, _ in points(events, run.run_id)} >= {(2, "loss"), (2, "epoch")}
    finished = status_of(events, run.run_id)
    assert finished["status"] == "failed" and finished["error"] == "RuntimeError: diverged"


# --- missing frameworks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "hidden", "extra"),
    [
        ("lightning", ("lightning", "pytorch_lightning"), "runstream[lightning]"),
        ("huggingface", ("transformers",), "runstream[huggingface]"),
        ("keras", ("keras",), "runstream[keras]"),
    ],
)
def test_missing_framework_names_the_extra(module: str, hidden: tuple[str, ...], extra: str) -> None:
    """In a fresh interpreter where the framework cannot be imported (sys.modules entry None), as without it."""
    script = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "import runstream\n"
        f"import runstream.producer.integrations.{module}\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "ImportError" in done.stderr and extra in done.stderr, done.stderr


def test_importing_runstream_imports_no_framework() -> None:
    script = (
        "import sys, runstream, runstream.producer.integrations\n"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers', 'keras', 'jax')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
