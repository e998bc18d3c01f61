"""Which optional extra brings which module, and the error that names the extra when one is missing.

`pip install runstream` is the SDK a training job needs (producer, schemas, `runstream run`/`sync`);
the consumer, ingest, analysis, monitor and the embedded ClickHouse come with `runstream[server]`,
dashboards as code with `runstream[dashboards]`, the framework integrations with their own extras.
This module is the one place that knows which top-level module comes from which extra, so the CLI and
the lazy package attributes (`runstream.Client`, `runstream.consumer.ConsumerService`) turn a bare
`No module named 'pyarrow'` into "needs the server extra: pip install 'runstream[server]'".
It imports nothing but the standard library: it must work on the bare SDK.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# top-level import name -> the extra (pyproject.toml [project.optional-dependencies]) that installs it
EXTRA_OF_MODULE: dict[str, str] = {
    "chdb": "server",
    "chdb_core": "server",
    "clickhouse_connect": "server",
    "pyarrow": "server",
    "pandas": "server",
    "prometheus_client": "server",
    "fastapi": "server",  # runstream server: the HTTP API, its web stack and the UI's charts
    "starlette": "server",
    "uvicorn": "server",
    "plotly": "server",
    "grafanalib": "dashboards",
    "attr": "dashboards",
    "yaml": "dashboards",
    "matplotlib": "dashboards",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "transformers": "huggingface",
    "keras": "keras",
    "optuna": "optuna",
}


class MissingExtraError(ImportError):
    """An optional extra is not installed; the message says which and how to install it, in one line."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(f"{feature} needs the {extra} extra: pip install 'runstream[{extra}]' "
                         f"(missing module {module})", name=module)
        self.feature = feature
        self.extra = extra
        self.module = module


def missing_extra(error: BaseException) -> tuple[str, str] | None:
    """(extra, module) when `error` comes from a module an extra installs, else None.

    Walks the causes too: some modules re-raise a missing import with a message of their own
    (`raise ImportError("... needs grafanalib") from error`), and only the innermost
    ModuleNotFoundError names the module. A module of ours or one no extra installs that is missing, or a
    module that is there but fails to import (`cannot import name ...`: a version clash), is a bug, not a
    missing extra: None, so that the caller lets it through.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MissingExtraError):
            return current.extra, current.module
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.split(".", 1)[0]
            if top in EXTRA_OF_MODULE:
                return EXTRA_OF_MODULE[top], top
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def requires_extra(feature: str) -> Iterator[None]:
    """Run an import; a missing module of an extra becomes a MissingExtraError naming `feature` and the extra."""
    try:
        yield
    except ImportError as error:
        found = missing_extra(error)
        if found is None or isinstance(error, MissingExtraError):
            raise
        raise MissingExtraError(feature, *found) from error


def lazy_attribute(package: str, name: str, module: str) -> Any:
    """`name` from `module`, imported on first use: the package-level `__getattr__` of a package whose
    names need an extra, so that importing the package (or its light submodules) never needs it."""
    with requires_extra(f"{package}.{name}"):
        return getattr(importlib.import_module(module), name)


def command_error(command: str, error: ImportError) -> str | None:
    """The one-line message for a command that failed for want of an extra, or None when it is not that."""
    found = missing_extra(error)
    if found is None:
        return None
    extra, module = found
    return f"runstream {command}: needs the {extra} extra: pip install 'runstream[{extra}]' (missing module {module})"
