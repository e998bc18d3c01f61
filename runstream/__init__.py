"""runstream: streaming experiment tracking for GPU training fleets.

    import runstream
    run = runstream.init(project="vision", params={"lr": 3e-4})
    run.log({"loss": 0.3, "acc": 0.9}, step=10)
    run.finish()

    runstream.Client(dsn).runs(project="vision")   # analysis, as pandas DataFrames

`pip install runstream` is the SDK only (logging, `runstream run`, `runstream sync`); `Client`, the
consumer and the embedded ClickHouse need `pip install 'runstream[server]'` (see runstream.extras).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runstream.producer import ProducerSettings, Run, init
from runstream.producer.data_versions import hash_path
from runstream.producer.drift_sampler import DriftSampler, monitor

if TYPE_CHECKING:
    from runstream.analysis.client import Client

__version__ = "0.1.0"
__all__ = ["Client", "DriftSampler", "ProducerSettings", "Run", "__version__", "hash_path", "init", "monitor"]


def __getattr__(name: str) -> Any:
    # Client pulls in pandas and the ClickHouse driver (the server extra); a training job that only logs
    # never pays for them, and without the extra gets an ImportError that names it.
    if name == "Client":
        from runstream.extras import lazy_attribute

        return lazy_attribute("runstream", "Client", "runstream.analysis.client")
    raise AttributeError(f"module 'runstream' has no attribute {name!r}")
