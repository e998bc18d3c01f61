"""Training jobs that tests/test_frameworks.py runs with the frameworks' own interpreter
(scripts/frameworks_env.sh: torch, Lightning, transformers), one job per subprocess:

    python tests/framework_jobs.py lightning OUT.json SPOOL ROOT [RESUME_RUN_ID CKPT]
    python tests/framework_jobs.py huggingface OUT.json SPOOL ROOT
    python tests/framework_jobs.py search OUT.json SPOOL ROOT      (Trainer.hyperparameter_search, Optuna)
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/framework_jobs.py ddp OUT_DIR SPOOL ROOT

Each trains a tiny model built here (random weights, synthetic data, nothing downloaded) through the
real framework with runstream's logger or callback, and writes its own record of what the framework
handed over (every metric at every step, the histograms it computed, the run id) to JSON, which the
test compares with what runstream stored. Not collected by pytest (no `test_` prefix); it never
imports pytest, which the frameworks' environment does not have.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RUNSTREAM_HEARTBEAT_INTERVAL", "0")

PROJECT = "frameworks"


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """What the framework handed over, as the JSON record keeps it (tensors as Python floats)."""
    kept: dict[str, float] = {}
    for key, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            kept[str(key)] = float(value)
    return kept


# --- Lightning ---------------------------------------------------------------------------------------


def _lightning_parts() -> tuple[Any, Any, Any]:
    """The module, the recording logger and the data: built after the import so that this file imports
    without torch."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import Logger

    class Regressor(L.LightningModule):  # type: ignore[misc]
        def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch: Any, index: int) -> Any:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y), on_epoch=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Recorder(Logger):  # type: ignore[misc]
        """Keeps exactly what Lightning hands its loggers, to compare with what runstream stored."""

        def __init__(self) -> None:
            super().__init__()
            self.points: list[list[Any]] = []
            self.params: dict[str, Any] = {}

        @property
        def name(self) -> str:
            return "recorder"

        @property
        def version(self) -> int:
            return 0

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            self.params.update(dict(vars(params) if not isinstance(params, dict) else params))

        def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
            self.points.append([step, _numbers(metrics)])

    def data(seed: int, size: int) -> Any:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(size, 8, generator=generator)
        return torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))

    return Regressor, Recorder, data


def lightning_job(out: Path, spool: Path, root: Path, resume: str | None = None, ckpt: str | None = None) -> None:
    """Fit 2 epochs (4 steps each) with a ModelCheckpoint on val_loss; resumed: 2 more epochs from `ckpt`."""
    import lightning as L
    import torch

    from runstream.producer.integrations.lightning import RunstreamLogger

    Regressor, Recorder, data = _lightning_parts()
    L.seed_everything(7, verbose=False)
    logger = RunstreamLogger(PROJECT, "lit-tiny", params={"dataset": "synthetic"}, spool=str(spool),
                             sample_interval=0, resume=resume,
                             metrics={"train_loss": {"goal": "min", "summary": ["min", "last"]}})
    recorder = Recorder()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(monitor="val_loss", mode="min", save_last=True)
    trainer = L.Trainer(max_epochs=4 if resume else 2, accelerator="cpu", devices=1, logger=[logger, recorder],
                        callbacks=[checkpoint], log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root))
    loader = torch.utils.data.DataLoader(data(1, 64), batch_size=16)
    trainer.fit(Regressor(lr=0.05, hidden=16), loader, torch.utils.data.DataLoader(data(2, 32), batch_size=16),
                ckpt_path=ckpt)
    out.write_text(json.dumps({
        "run_id": logger.version, "attempt": logger.run.attempt, "finished": logger.run.finished,
        "points": recorder.points, "params": _numbers(recorder.params), "last_checkpoint": checkpoint.last_model_path,
        "global_step": trainer.global_step,
    }))


# --- Hugging Face transformers -------------------------------------------------------------------------


def _trainer_parts() -> tuple[Any, Any, Any, Any]:
    """The tiny BERT config, the token data set, the recording callback and the accuracy metric."""
    import numpy as np
    import torch
    from transformers import BertConfig, TrainerCallback

    class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
        def __init__(self, seed: int, size: int) -> None:
            generator = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 50, (size, 8), generator=generator)
            self.labels = (self.ids[:, 0] >= 25).long()

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, index: int) -> dict[str, Any]:
            return {"input_ids": self.ids[index], "labels": self.labels[index]}

    class Recorder(TrainerCallback):  # type: ignore[misc]
        """What the Trainer logs at which step; in a search, each trial's params and the run the
        runstream callback (`watched`) had for it."""

        def __init__(self, watched: Any = None) -> None:
            self.points: list[list[Any]] = []
            self.trials: list[dict[str, Any]] = []
            self.watched = watched

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.trial_params is not None:
                self.trials.append({"params": dict(state.trial_params), "points": []})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            point = [state.global_step, _numbers(dict(logs or {}))]
            self.points.append(point)
            if self.trials:
                self.trials[-1]["points"].append(point)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.trials and self.watched is not None:
                self.trials[-1]["run_id"] = self.watched.run.run_id
                self.trials[-1]["finished"] = self.watched.run.finished

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return config, Tokens, Recorder, accuracy


def huggingface_job(out: Path, spool: Path, root: Path) -> None:
    """A 1-layer BERT classifier (random weights) trained 2 epochs by the real Trainer, evaluated each epoch;
    `metric_for_best_model="accuracy"` is what declares eval_accuracy's goal. Sends to the broker that
    RUNSTREAM_KAFKA names, if any (the spool otherwise)."""
    import torch
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    from runstream.producer.integrations.huggingface import RunstreamCallback
    from runstream.producer.run import producer_stats

    config, Tokens, Recorder, accuracy = _trainer_parts()
    torch.manual_seed(7)
    args = TrainingArguments(output_dir=str(root), learning_rate=3e-4, per_device_train_batch_size=8,
                             num_train_epochs=2, logging_steps=2, eval_strategy="epoch", save_strategy="no",
                             metric_for_best_model="accuracy", report_to="none", use_cpu=True, disable_tqdm=True,
                             seed=7, hub_token="secret-token")  # noqa: S106  the test checks it never reaches the spool
    callback = RunstreamCallback(PROJECT, "bert-tiny", params={"dataset": "synthetic"}, spool=str(spool),
                                 sample_interval=0)
    recorder = Recorder()
    trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Tokens(1, 32),
                      eval_dataset=Tokens(2, 16), compute_metrics=accuracy, callbacks=[callback, recorder])
    trainer.train()
    assert callback.run is not None
    out.write_text(json.dumps({"run_id": callback.run.run_id, "finished": callback.run.finished,
                               "points": recorder.points, "global_step": trainer.state.global_step,
                               "producer": producer_stats()}))


def search_job(out: Path, spool: Path, root: Path) -> None:
    """`Trainer.hyperparameter_search` with Optuna, 2 trials of 1 epoch: the callback gets a run per trial."""
    import torch
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    from runstream.producer.integrations.huggingface import RunstreamCallback

    config, Tokens, Recorder, accuracy = _trainer_parts()

    def model_init(trial: Any = None) -> Any:
        torch.manual_seed(7)
        return BertForSequenceClassification(config)

    args = TrainingArguments(output_dir=str(root), per_device_train_batch_size=8, num_train_epochs=1,
                             logging_steps=2, eval_strategy="epoch", save_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=7)
    callback = RunstreamCallback(PROJECT, "bert-search", spool=str(spool), sample_interval=0)
    recorder = Recorder(callback)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=Tokens(1, 32), eval_dataset=Tokens(2, 16),
                      compute_metrics=accuracy, callbacks=[callback, recorder])
    trainer.hyperparameter_search(direction="maximize", backend="optuna", n_trials=2,
                                  hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate",
                                                                                               1e-4, 1e-2, log=True)},
                                  compute_objective=lambda metrics: metrics["eval_accuracy"])
    out.write_text(json.dumps({"trials": recorder.trials}))


# --- DDP: 2 CPU processes (gloo) under torchrun, every rank logged --------------------------------------


def ddp_job(out_dir: Path, spool: Path, root: Path) -> None:
    """Lightning DDP on 2 CPU processes; each rank logs its own loss (its own shard of the data) and a
    histogram of the first layer's per-unit gradient norms before each optimizer step."""
    import lightning as L
    import numpy as np
    import torch

    from runstream.producer.integrations.lightning import RunstreamLogger

    Regressor, Recorder, data = _lightning_parts()
    rank = int(os.environ["RANK"])
    histograms: list[dict[str, Any]] = []

    class GradNorms(L.Callback):  # type: ignore[misc]
        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            norms = module.net[0].weight.grad.detach().norm(dim=1)
            trainer.loggers[0].run.log_histogram("grad/norm", norms, step=trainer.global_step, bins=8)
            values = norms.numpy().astype(np.float64)
            counts, edges = np.histogram(values, bins=8)
            histograms.append({"step": trainer.global_step, "values": values.tolist(), "counts": counts.tolist(),
                               "edges": edges.tolist()})

    L.seed_everything(7, verbose=False)
    logger = RunstreamLogger(PROJECT, "lit-ddp", spool=str(spool), sample_interval=0, log_all_ranks=True)
    recorder = Recorder()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=[logger, recorder],
                        callbacks=[GradNorms()], log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=str(root))
    trainer.fit(Regressor(lr=0.05, hidden=16), torch.utils.data.DataLoader(data(1, 64), batch_size=8))
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "host": socket.gethostname(), "run_id": logger.run.run_id, "sdk_rank": logger.run.rank,
        "sdk_node": logger.run.node, "lead": logger.run.is_lead, "points": recorder.points,
        "histograms": histograms,
    }))


if __name__ == "__main__":
    job, *arguments = sys.argv[1:]
    paths = [Path(argument) for argument in arguments[:3]]
    if job == "lightning":
        lightning_job(*paths, *arguments[3:5])
    elif job == "huggingface":
        huggingface_job(*paths)
    elif job == "search":
        search_job(*paths)
    elif job == "ddp":
        ddp_job(*paths)
    else:
        raise SystemExit(f"framework_jobs.py: unknown job {job!r}: lightning, huggingface, search or ddp")
