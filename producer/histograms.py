"""Histograms binned in the SDK: the `metric_histogram` record of `Run.log_histogram`.

A training job hands over a whole tensor (gradient norms, activations, weights); only its bins
travel, so the cost on the wire and in ClickHouse is the same for ten values or ten million. The
rules, each applied before anything is queued (a refused call records nothing):

- `values` may be a list, a numpy array (any shape: flattened), or anything with
  `.detach().cpu().numpy()` (a torch tensor: torch is never imported here; bfloat16 and other
  dtypes numpy lacks go through `.float()`) or `.numpy()`.
  Its dtype must be numbers or bools; strings, objects and complex numbers are refused.
- NaN, +Inf and -Inf are counted apart (`nan_count`, `pos_inf_count`, `neg_inf_count`), never
  binned; the bins hold the finite values. An empty array is refused (there is nothing to draw and
  it is almost always a bug); an array with no finite value gets numpy's default range [0, 1] with
  every bin at 0, its non-finite values counted.
- `bins=N` (default 64): N equal bins over the finite values' range (numpy.histogram's rule: a
  single distinct value v gets the range [v - 0.5, v + 0.5]). `bins="auto"` (or another numpy rule
  name: fd, doane, scott, stone, rice, sturges, sqrt): numpy chooses; more than MAX_BINS bins are
  cut to MAX_BINS equal bins. `bins=[e0, e1, ...]` or `edges=[...]`: these edges.
  Edges that coincide in double precision (a range a few ulps wide) are merged, so stored edges are
  always strictly increasing.
- Values outside explicit edges are not counted, as in numpy.histogram (the last bin is closed).
- `edges` with `counts` (no values): a histogram computed elsewhere, stored as given; counts must be
  non-negative integers, one fewer than the edges.

Stored counts therefore equal `numpy.histogram(finite_values, bins=stored_edges)[0]`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream.producer.encodable import LONG_MAX, shown

#: The most bins a histogram may have: 10,000 bins are about 180 kB on the wire at worst.
MAX_BINS = 10_000
DEFAULT_BINS = 64
#: The bin rules of numpy.histogram_bin_edges accepted as `bins=`.
BIN_RULES = ("auto", "fd", "doane", "scott", "stone", "rice", "sturges", "sqrt")


def _brief(values: Any) -> str:
    """A value for an error message, never the whole of a long list or array."""
    if isinstance(values, list | tuple) and len(values) > 8:
        return f"{shown(list(values[:8]))[:-1]}, ... ({len(values)} items)]"
    return shown(values)


def as_array(label: str, values: Any) -> np.ndarray[Any, Any]:
    """`values` as a flat float64 array; lists, numpy arrays, torch (or anything with `.numpy()`)."""
    source = values
    try:
        if hasattr(source, "detach") and callable(source.detach):  # torch: off the graph, off the GPU
            source = source.detach()
            if hasattr(source, "cpu") and callable(source.cpu):
                source = source.cpu()
        if not isinstance(source, np.ndarray) and hasattr(source, "numpy") and callable(source.numpy):
            try:
                source = source.numpy()
            except (TypeError, RuntimeError):  # torch bfloat16 / float8: no numpy dtype, so as float32
                if not callable(getattr(source, "float", None)):
                    raise
                source = source.float().numpy()
        array = np.asarray(source)
    except (ValueError, TypeError, OverflowError, RuntimeError) as error:
        raise TypeError(f"{label}: values must be an array of numbers, got {type(values).__name__} "
                        f"{_brief(values)} ({error})") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{label}: values must be numbers, got an array of dtype {array.dtype} ({_brief(values)})")
    if array.size == 0:
        raise ValueError(f"{label}: values is empty (shape {array.shape}); a histogram needs at least one value")
    return array.astype(np.float64, copy=False).ravel()


def check_edges(label: str, edges: Any) -> np.ndarray[Any, Any]:
    """Edges as a float64 array: one-dimensional, at least two, finite, strictly increasing."""
    try:
        array = np.asarray(edges, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as error:
        raise TypeError(f"{label}: edges must be numbers, got {_brief(edges)} ({error})") from None
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{label}: edges must be a list of at least 2 numbers (1 bin), got {_brief(edges)}")
    if array.size > MAX_BINS + 1:
        raise ValueError(f"{label}: {array.size - 1} bins, more than the {MAX_BINS} allowed")
    if not np.isfinite(array).all():
        raise ValueError(f"{label}: edges must be finite, got {_brief(edges)}")
    if not (np.diff(array) > 0).all():
        raise ValueError(f"{label}: edges must be strictly increasing, got {_brief(edges)}")
    return array


def _check_counts(label: str, counts: Any, bins: int) -> list[int]:
    try:
        array = np.asarray(counts)
    except (ValueError, TypeError, OverflowError) as error:
        raise TypeError(f"{label}: counts must be integers, got {_brief(counts)} ({error})") from None
    if array.ndim != 1:
        raise ValueError(f"{label}: counts must be a flat list of integers, got {_brief(counts)}")
    if array.size != bins:
        raise ValueError(f"{label}: {array.size} counts for {bins + 1} edges (edges must be one more than counts)")
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)  # 3.0 is a count; 2.5 is not
    if array.dtype.kind not in "iu":
        raise TypeError(f"{label}: counts must be integers, got {_brief(counts)}")
    listed = [int(c) for c in array.tolist()]
    bad = [c for c in listed if not 0 <= c <= LONG_MAX]
    if bad:
        raise ValueError(f"{label}: counts must be integers >= 0, got {shown(bad[0])} in {_brief(counts)}")
    return listed


def _bin_count(label: str, bins: Any) -> int | str | None:
    """An int bin count, a numpy rule name, or None for explicit edges given as `bins`."""
    if isinstance(bins, str):
        if bins not in BIN_RULES:
            raise ValueError(f"{label}: bins must be a number of bins, one of {', '.join(BIN_RULES)}, "
                             f"or a list of edges, got {bins!r}")
        return bins
    if isinstance(bins, bool):
        raise TypeError(f"{label}: bins must be a number of bins, a rule name or a list of edges, got {bins!r}")
    if isinstance(bins, int | np.integer):
        if not 0 < int(bins) <= MAX_BINS:
            raise ValueError(f"{label}: bins must be between 1 and {MAX_BINS}, got {int(bins)}")
        return int(bins)
    if isinstance(bins, float):
        raise TypeError(f"{label}: bins must be an integer number of bins, got {bins!r}")
    return None


def _strict(edges: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Edges with those that coincide in double precision merged (a range a few ulps wide)."""
    if not (np.diff(edges) > 0).all():
        edges = np.unique(edges)
        if edges.size < 2:  # cannot happen with numpy's ranges, kept for safety
            edges = np.array([edges[0], np.nextafter(edges[0], math.inf)])
    return edges


def _equal_bins(finite: np.ndarray[Any, Any], bins: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(counts, edges) of `bins` equal bins over the finite values' range: numpy.histogram's rule and
    its fast path, without its refusal of a range too narrow for the bins (a few ulps wide: there the
    edges that coincide are merged)."""
    if finite.size == 0:
        low, high = 0.0, 1.0
    else:
        low, high = float(finite.min()), float(finite.max())
        if low == high:
            low, high = low - 0.5, high + 0.5
    if not math.isfinite(high - low):
        raise ValueError(f"the values' range [{low!r}, {high!r}] is wider than a double holds")
    try:
        counts, edges = np.histogram(finite, bins=bins, range=(low, high))
        return counts, edges
    except ValueError:  # "Too many bins for data range"
        edges = _strict(np.linspace(low, high, bins + 1))
        return np.histogram(finite, bins=edges)[0], edges


def _rule_bins(finite: np.ndarray[Any, Any], rule: str) -> int | None:
    """How many equal bins numpy's `rule` makes of these values (numpy.histogram_bin_edges' own
    computation, from its bin-width selectors), found before anything is allocated: 'fd' on a tight
    bulk with far outliers asks for ~10^10 bins (tens of GB). None when numpy's selectors (a private
    table, present from numpy 1.x to 2.x) cannot be reached."""
    try:
        from numpy.lib import _histograms_impl as impl  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.lib import histograms as impl  # type: ignore[no-redef, attr-defined, unused-ignore]
    selector = getattr(impl, "_hist_bin_selectors", {}).get(rule)
    if selector is None:
        return None
    if finite.size == 0:
        return 1
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    with np.errstate(all="ignore"):
        width = float(selector(finite, (low, high)))
        bins = (high - low) / width if width else 1.0
    if not math.isfinite(bins):
        raise ValueError(f"the values' range [{low!r}, {high!r}] is wider than a double holds")
    return max(1, math.ceil(bins))


def _binned(finite: np.ndarray[Any, Any], bins: int | str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(counts, edges) by a bin count or a numpy rule (cut to MAX_BINS equal bins beyond it)."""
    if isinstance(bins, str):
        count = _rule_bins(finite, bins)
        if count is None:  # numpy's own call, then its edges
            with np.errstate(all="ignore"):  # a range wider than a double holds raises below, naming it
                edges = _strict(np.histogram_bin_edges(finite, bins=bins))
            if not np.isfinite(edges).all():
                raise ValueError(f"the values' range [{float(finite.min())!r}, {float(finite.max())!r}] is wider "
                                 "than a double holds")
            return np.histogram(finite, bins=edges)[0], edges
        bins = min(count, MAX_BINS)
    return _equal_bins(finite, bins)


def histogram_fields(metric: str, values: Any = None, *, bins: int | str | Sequence[float] = DEFAULT_BINS,
                     edges: Sequence[float] | None = None, counts: Sequence[int] | None = None) -> dict[str, Any]:
    """edges, counts, nan_count, neg_inf_count, pos_inf_count of a `metric_histogram` record.

    Raises ValueError/TypeError naming the metric and the value for anything the rules refuse
    (the module's docstring), before the caller has recorded anything.
    """
    label = f"log_histogram({metric!r})"
    if counts is not None:
        if values is not None:
            raise ValueError(f"{label}: give values or edges with counts, not both")
        if edges is None:
            raise ValueError(f"{label}: counts need their edges (one more edge than counts)")
        edge_array = check_edges(label, edges)
        return {"edges": edge_array.tolist(), "counts": _check_counts(label, counts, edge_array.size - 1),
                "nan_count": 0, "neg_inf_count": 0, "pos_inf_count": 0}
    if values is None:
        raise ValueError(f"{label}: give values (a list, array or tensor), or edges with counts")
    count_or_rule = _bin_count(label, bins)
    given: np.ndarray[Any, Any] | None = None
    if edges is not None:
        if count_or_rule != DEFAULT_BINS:
            raise ValueError(f"{label}: give bins or edges, not both (bins={shown(bins)})")
        given = check_edges(label, edges)
    elif count_or_rule is None:
        given = check_edges(label, bins)
    array = as_array(label, values)
    finite = array[np.isfinite(array)]
    nan_count = pos_inf = neg_inf = 0
    if finite.size != array.size:
        nan_count, pos_inf = int(np.isnan(array).sum()), int(np.isposinf(array).sum())
        neg_inf = array.size - finite.size - nan_count - pos_inf
    if given is not None:
        binned, edge_array = np.histogram(finite, bins=given)[0], given
    else:
        assert count_or_rule is not None
        try:
            binned, edge_array = _binned(finite, count_or_rule)
        except ValueError as error:  # e.g. a range wider than a double holds (-1e308 .. 1e308)
            raise ValueError(f"{label}: cannot bin these values ({error}); pass edges=[...]") from None
    return {"edges": edge_array.tolist(), "counts": binned.tolist(), "nan_count": nan_count,
            "neg_inf_count": neg_inf, "pos_inf_count": pos_inf}
