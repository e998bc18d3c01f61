"""Optional bridges from training frameworks to runstream runs, one module per framework.

Each module imports its framework when it is itself imported, and only then: `import runstream`
never pulls in torch, transformers or keras. Without the framework, importing the module raises
an ImportError naming the extra to install (`pip install 'runstream[lightning]'`, `[huggingface]`,
`[keras]`).

- `runstream.producer.integrations.lightning`: `RunstreamLogger`, a PyTorch Lightning logger.
- `runstream.producer.integrations.huggingface`: `RunstreamCallback`, a transformers `TrainerCallback`.
- `runstream.producer.integrations.keras`: `RunstreamKerasCallback`, a Keras 3 callback.

All three start a run of their own when none is handed to them, finish only the runs they started,
and leave distributed ranks to the `Run` (every rank samples its GPUs, rank 0 records the rest).
"""
