"""runstream: streaming experiment tracking for GPU training fleets.

    import runstream
    run = runstream.init(project="vision", params={"lr": 3e-4})
    run.log({"loss": 0.3, "acc": 0.9}, step=10)
    run.finish()
"""

from runstream.producer import ProducerSettings, Run, init
from runstream.producer.data_versions import hash_path

__version__ = "0.1.0"
__all__ = ["ProducerSettings", "Run", "__version__", "hash_path", "init"]
