"""Restricted loading of pickled pandas DataFrames.

Threat model
------------
One of our data sources ships pickled DataFrames. A pickle is a small program:
on load it may import any importable callable (``os.system``, ``builtins.exec``,
``subprocess.Popen``, ...) and call it with attacker-chosen arguments, so
``pickle.load`` / ``pandas.read_pickle`` on an untrusted file means running the
sender's code. We therefore treat every pickle as hostile and unpickle it with
:class:`RestrictedUnpickler`, which resolves *only* the globals listed in
:data:`ALLOWED_GLOBALS`: the pandas/numpy/pyarrow classes and reconstructor
functions a DataFrame or Series pickle needs (current and legacy names), plus
inert builtins and value types (``slice``, ``bytearray``, ``datetime``,
``decimal.Decimal``, ...). Nothing on the list performs I/O of the caller's
choosing or evaluates code; anything else (and every persistent id) is refused
with :class:`UnsafePickleError` *before* it can be called.

Three globals are mediated rather than handed out as-is:

* ``builtins.getattr`` (emitted for ``zoneinfo.ZoneInfo._unpickle``) is replaced
  by a lookup that only returns attributes whose own ``module.qualname`` is in
  the allowlist, so it grants nothing the allowlist does not already grant.
* ``_codecs.encode`` (protocol-2 encoding of ``bytes``) only accepts
  ``str -> latin-1``.
* ``pyarrow.lib._restore_array`` fully validates the rebuilt Arrow array, so
  inconsistent buffer lengths are rejected instead of being read out of bounds.

Out of scope: resource exhaustion (a pickle can still ask for a huge array or a
deep nesting; the result is an exception, not code execution) and reading the
system time-zone database when a ``zoneinfo``/``pytz`` zone is unpickled. Prefer
CSV/Parquet for new data; this module exists so the pickle source can be read
without trusting it.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import contextlib
import gzip
import importlib
import lzma
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import pandas as pd

__all__ = [
    "ALLOWED_GLOBALS",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "load_dataframe",
]

GlobalName = tuple[str, str]

_FIX_HINT = (
    "re-export the data as CSV/Parquet, or add the class to "
    "finsent.safe_pickle.ALLOWED_GLOBALS if you trust it"
)


class UnsafePickleError(ValueError):
    """A pickle referenced a global (or persistent id) outside the allowlist."""

    def __init__(self, path: str | os.PathLike[str] | None, refused: str, *, kind: str = "global") -> None:
        self.path = str(path) if path is not None else "<stream>"
        self.refused = refused
        super().__init__(
            f"refusing to unpickle {self.path}: it references the {kind} {refused!r}, "
            "which is not in the allowlist of pandas/numpy types (pickles can run "
            f"arbitrary code when loaded). Fix: {_FIX_HINT}."
        )


_OFFSETS = (
    "DateOffset", "Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano",
    "Week", "WeekOfMonth", "LastWeekOfMonth", "BusinessDay", "BusinessHour",
    "MonthEnd", "MonthBegin", "BusinessMonthEnd", "BusinessMonthBegin",
    "SemiMonthEnd", "SemiMonthBegin", "QuarterEnd", "QuarterBegin",
    "BQuarterEnd", "BQuarterBegin", "HalfYearEnd", "HalfYearBegin",
    "BHalfYearEnd", "BHalfYearBegin", "YearEnd", "YearBegin", "BYearEnd",
    "BYearBegin", "Easter", "FY5253", "FY5253Quarter",
)

#: Every (module, qualname) a pickle may reference. Names that do not exist in
#: the installed pandas/numpy (legacy locations) are resolved lazily and fail
#: with a clear error only if a pickle actually uses them.
ALLOWED_GLOBALS: frozenset[GlobalName] = frozenset(
    {
        # --- inert builtins / stdlib value types --------------------------------
        ("builtins", "slice"),
        ("builtins", "range"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("builtins", "complex"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "object"),  # base argument of copyreg._reconstructor
        ("copyreg", "_reconstructor"),  # protocols 0/1 (cls restricted by this list)
        ("copyreg", "__newobj__"),
        ("_codecs", "encode"),  # mediated: str -> latin-1 bytes only
        ("datetime", "date"),
        ("datetime", "time"),
        ("datetime", "datetime"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("decimal", "Decimal"),
        ("zoneinfo", "ZoneInfo"),  # reads only the validated system tz database
        ("zoneinfo", "ZoneInfo._unpickle"),
        ("pytz", "_p"),  # pandas < 3 default tz objects (zone name is validated)
        ("pytz", "_UTC"),
        # --- numpy (2.x names, then 1.x names) -----------------------------------
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        # --- pyarrow (ArrowStringArray / ArrowExtensionArray state) -------------
        ("pyarrow.lib", "_restore_array"),  # mediated: validated after rebuild
        ("pyarrow.lib", "py_buffer"),
        ("pyarrow.lib", "type_for_alias"),
        # --- pandas containers (pandas 3 public module, then defining modules) --
        ("pandas", "DataFrame"),
        ("pandas", "Series"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.series", "Series"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas._libs.internals", "BlockPlacement"),
        ("pandas.core.internals.blocks", "new_block"),  # -> _unpickle_block
        ("pandas.core.internals.blocks", "Block"),
        ("pandas.core.internals.blocks", "NumpyBlock"),
        ("pandas.core.internals.blocks", "ExtensionBlock"),
        ("pandas.core.internals.blocks", "DatetimeLikeBlock"),
        ("pandas.core.internals.blocks", "NDArrayBackedExtensionBlock"),
        ("pandas.core.internals.blocks", "ObjectBlock"),
        ("pandas.core.internals.blocks", "IntBlock"),
        ("pandas.core.internals.blocks", "FloatBlock"),
        ("pandas.core.internals.blocks", "BoolBlock"),
        ("pandas.core.internals.blocks", "ComplexBlock"),
        ("pandas.core.internals.blocks", "DatetimeBlock"),
        ("pandas.core.internals.blocks", "DatetimeTZBlock"),
        ("pandas.core.internals.blocks", "TimeDeltaBlock"),
        ("pandas.core.internals.blocks", "CategoricalBlock"),
        # --- indexes ---------------------------------------------------------------
        ("pandas", "Index"),
        ("pandas", "RangeIndex"),
        ("pandas", "MultiIndex"),
        ("pandas", "CategoricalIndex"),
        ("pandas", "DatetimeIndex"),
        ("pandas", "TimedeltaIndex"),
        ("pandas", "PeriodIndex"),
        ("pandas", "IntervalIndex"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.indexes.multi", "MultiIndex"),
        ("pandas.core.indexes.category", "CategoricalIndex"),
        ("pandas.core.indexes.datetimes", "DatetimeIndex"),
        ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
        ("pandas.core.indexes.timedeltas", "TimedeltaIndex"),
        ("pandas.core.indexes.timedeltas", "_new_TimedeltaIndex"),
        ("pandas.core.indexes.period", "PeriodIndex"),
        ("pandas.core.indexes.period", "_new_PeriodIndex"),
        ("pandas.core.indexes.interval", "IntervalIndex"),
        ("pandas.core.indexes.numeric", "Int64Index"),  # -> Index
        ("pandas.core.indexes.numeric", "UInt64Index"),  # -> Index
        ("pandas.core.indexes.numeric", "Float64Index"),  # -> Index
        # --- extension arrays and dtypes -----------------------------------------
        ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        ("pandas", "Categorical"),
        ("pandas", "CategoricalDtype"),
        ("pandas", "DatetimeTZDtype"),
        ("pandas", "PeriodDtype"),
        ("pandas", "IntervalDtype"),
        ("pandas", "StringDtype"),
        ("pandas", "ArrowDtype"),
        ("pandas", "BooleanDtype"),
        ("pandas", "Int8Dtype"),
        ("pandas", "Int16Dtype"),
        ("pandas", "Int32Dtype"),
        ("pandas", "Int64Dtype"),
        ("pandas", "UInt8Dtype"),
        ("pandas", "UInt16Dtype"),
        ("pandas", "UInt32Dtype"),
        ("pandas", "UInt64Dtype"),
        ("pandas", "Float32Dtype"),
        ("pandas", "Float64Dtype"),
        ("pandas.arrays", "StringArray"),
        ("pandas.arrays", "ArrowStringArray"),
        ("pandas.arrays", "ArrowExtensionArray"),
        ("pandas.arrays", "IntegerArray"),
        ("pandas.arrays", "FloatingArray"),
        ("pandas.arrays", "BooleanArray"),
        ("pandas.arrays", "DatetimeArray"),
        ("pandas.arrays", "TimedeltaArray"),
        ("pandas.arrays", "PeriodArray"),
        ("pandas.arrays", "IntervalArray"),
        ("pandas.arrays", "NumpyExtensionArray"),
        ("pandas.core.arrays.categorical", "Categorical"),
        ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
        ("pandas.core.dtypes.dtypes", "DatetimeTZDtype"),
        ("pandas.core.dtypes.dtypes", "PeriodDtype"),
        ("pandas.core.dtypes.dtypes", "IntervalDtype"),
        ("pandas.core.dtypes.dtypes", "ArrowDtype"),
        ("pandas.core.arrays.string_", "StringArray"),
        ("pandas.core.arrays.string_", "StringDtype"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArrayNumpySemantics"),
        ("pandas.core.arrays.arrow.array", "ArrowExtensionArray"),
        ("pandas.core.arrays.integer", "IntegerArray"),
        ("pandas.core.arrays.integer", "Int8Dtype"),
        ("pandas.core.arrays.integer", "Int16Dtype"),
        ("pandas.core.arrays.integer", "Int32Dtype"),
        ("pandas.core.arrays.integer", "Int64Dtype"),
        ("pandas.core.arrays.integer", "UInt8Dtype"),
        ("pandas.core.arrays.integer", "UInt16Dtype"),
        ("pandas.core.arrays.integer", "UInt32Dtype"),
        ("pandas.core.arrays.integer", "UInt64Dtype"),
        ("pandas.core.arrays.floating", "FloatingArray"),
        ("pandas.core.arrays.floating", "Float32Dtype"),
        ("pandas.core.arrays.floating", "Float64Dtype"),
        ("pandas.core.arrays.boolean", "BooleanArray"),
        ("pandas.core.arrays.boolean", "BooleanDtype"),
        ("pandas.core.arrays.datetimes", "DatetimeArray"),
        ("pandas.core.arrays.timedeltas", "TimedeltaArray"),
        ("pandas.core.arrays.period", "PeriodArray"),
        ("pandas.core.arrays.interval", "IntervalArray"),
        ("pandas.core.arrays.numpy_", "NumpyExtensionArray"),
        ("pandas.core.arrays.numpy_", "PandasArray"),
        # --- scalars ---------------------------------------------------------------
        ("pandas", "NA"),
        ("pandas", "NaT"),
        ("pandas", "Timestamp"),
        ("pandas", "Timedelta"),
        ("pandas", "Period"),
        ("pandas", "Interval"),
        ("pandas._libs.missing", "NA"),
        ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
        ("pandas._libs.tslibs.nattype", "__nat_unpickle"),  # -> _nat_unpickle
        ("pandas._libs.tslibs.timestamps", "Timestamp"),
        ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
        ("pandas._libs.tslibs.timedeltas", "Timedelta"),
        ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
        ("pandas._libs.tslibs.period", "Period"),
        ("pandas._libs.interval", "Interval"),
        ("pandas._libs.interval", "__pyx_unpickle_IntervalMixin"),
        *(("pandas._libs.tslibs.offsets", name) for name in _OFFSETS),
    }
)

# Legacy locations pandas itself re-routes when unpickling (see
# pandas.compat.pickle_compat); applied before resolving. Targets are allowlisted.
_RENAMED: dict[GlobalName, GlobalName] = {
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
    ("pandas._libs.tslibs.nattype", "__nat_unpickle"): ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.arrays.numpy_", "PandasArray"): ("pandas.core.arrays.numpy_", "NumpyExtensionArray"),
}

# numpy 1.x pickles say numpy.core.*, numpy 2.x pickles say numpy._core.*; if the
# installed numpy lacks one spelling, the other is tried (also allowlisted).
_NUMPY_CORE_SPELLINGS = ("numpy.core", "numpy._core")


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as used by protocol-2 ``bytes`` pickles."""
    if not isinstance(obj, str) or encoding.lower().replace("_", "-") not in {"latin1", "latin-1"}:
        raise pickle.UnpicklingError(f"_codecs.encode is only allowed as str->latin1, got {encoding!r}")
    return obj.encode("latin-1", errors)


def _restore_validated_arrow_array(*args: Any) -> Any:
    """``pyarrow.lib._restore_array`` followed by a full consistency check."""
    from pyarrow.lib import _restore_array

    array = _restore_array(*args)
    array.validate(full=True)
    return array


_MEDIATED: dict[GlobalName, Callable[..., Any]] = {
    ("_codecs", "encode"): _latin1_encode,
    ("pyarrow.lib", "_restore_array"): _restore_validated_arrow_array,
}


def _normalise(module: str, name: str) -> GlobalName:
    """Map Python 2 names (``__builtin__``, ``copy_reg``) like pickle's fix_imports."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _import_attr(module: str, qualname: str) -> Any:
    with warnings.catch_warnings():
        # numpy 2 warns on the numpy.core.* spellings old pickles use.
        warnings.simplefilter("ignore", DeprecationWarning)
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that only resolves globals in an allowlist.

    ``source`` is only used in error messages. ``allowed`` defaults to
    :data:`ALLOWED_GLOBALS`; pass a superset to admit extra trusted classes.
    """

    def __init__(
        self,
        file: IO[bytes],
        *,
        source: str | os.PathLike[str] | None = None,
        allowed: Iterable[GlobalName] = ALLOWED_GLOBALS,
    ) -> None:
        super().__init__(file)
        self.source = source
        self.allowed: frozenset[GlobalName] = frozenset(allowed)

    def find_class(self, module: str, name: str) -> Any:
        module, name = _normalise(module, name)
        if (module, name) == ("builtins", "getattr"):
            return self._restricted_getattr
        return self._resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        shown = repr(pid)
        raise UnsafePickleError(
            self.source, shown if len(shown) <= 80 else shown[:77] + "...", kind="persistent id"
        )

    def _resolve(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in self.allowed:
            raise UnsafePickleError(self.source, f"{module}.{name}")
        if key in _MEDIATED:
            return _MEDIATED[key]
        candidates = [_RENAMED.get(key, key)]
        for old, new in (_NUMPY_CORE_SPELLINGS, _NUMPY_CORE_SPELLINGS[::-1]):
            if module == old or module.startswith(old + "."):
                candidates.append((new + module[len(old):], name))
        for cand_module, cand_name in candidates:
            if (cand_module, cand_name) not in self.allowed:
                continue
            try:
                return _import_attr(cand_module, cand_name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(
            f"the pickle needs {module}.{name}, which is allowed but does not exist in the "
            f"installed libraries (pandas {pd.__version__}); it was probably written by a much "
            "older or newer pandas/numpy: re-export it as CSV/Parquet"
        )

    def _restricted_getattr(self, obj: Any, name: str) -> Any:
        """``getattr`` limited to attributes that are themselves allowlisted."""
        module = getattr(obj, "__module__", None) if isinstance(obj, type) else None
        qualname = getattr(obj, "__qualname__", None) if isinstance(obj, type) else None
        if not (isinstance(module, str) and isinstance(qualname, str) and isinstance(name, str)):
            raise UnsafePickleError(self.source, f"getattr(<{type(obj).__name__} object>, {name!r})")
        target = (module, f"{qualname}.{name}")
        if (module, qualname) not in self.allowed or target not in self.allowed:
            raise UnsafePickleError(self.source, ".".join(target))
        if self._resolve(module, qualname) is not obj:  # __module__/__qualname__ must be genuine
            raise UnsafePickleError(self.source, ".".join(target))
        return self._resolve(*target)


class _BadFileError(ValueError):
    """A ValueError whose message already names the file."""


_MAGIC = (
    (b"\x1f\x8b", ".gz"),
    (b"BZh", ".bz2"),
    (b"\xfd7zXZ\x00", ".xz"),
    (b"PK\x03\x04", ".zip"),
)
_SUFFIXES = {".gz": ".gz", ".gzip": ".gz", ".bz2": ".bz2", ".xz": ".xz", ".lzma": ".xz", ".zip": ".zip"}


def _decompressed(raw: IO[bytes], path: Path, stack: contextlib.ExitStack) -> IO[bytes]:
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:  # .pkl / .pickle / anything else: sniff in case it is compressed anyway
        head = raw.read(8)
        raw.seek(0)
        kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind == ".gz":
        return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == ".bz2":
        return stack.enter_context(bz2.BZ2File(raw, mode="rb"))
    if kind == ".xz":
        return stack.enter_context(lzma.LZMAFile(raw, mode="rb"))
    if kind == ".zip":
        archive = stack.enter_context(zipfile.ZipFile(raw))
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1:
            raise _BadFileError(
                f"{path}: a zipped pickle must contain exactly one file, found {len(members)}"
            )
        return stack.enter_context(archive.open(members[0]))
    return raw


def load_dataframe(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load an untrusted pickled DataFrame (or Series) from ``path``.

    Compression is chosen by extension (``.gz``, ``.bz2``, ``.xz``, ``.zip`` with a
    single member; otherwise sniffed from the magic bytes). Raises
    :class:`UnsafePickleError` if the pickle references anything outside
    :data:`ALLOWED_GLOBALS`, and ``ValueError`` naming the file if it is corrupt,
    truncated or does not hold a DataFrame/Series. A Series becomes a one-column
    frame.
    """
    path = Path(path)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(path, "rb"))  # missing file: FileNotFoundError as usual
        try:
            stream = _decompressed(raw, path, stack)
            obj = RestrictedUnpickler(stream, source=path).load()
        except (UnsafePickleError, _BadFileError):
            raise
        except Exception as exc:  # unpickling errors come in every type (EOFError, KeyError, ...)
            raise ValueError(
                f"cannot load pickled DataFrame from {path}: the file is corrupt, truncated or "
                f"not a pandas pickle ({type(exc).__name__}: {exc})"
            ) from exc
    if isinstance(obj, pd.Series):
        obj = obj.to_frame()
    if not isinstance(obj, pd.DataFrame):
        kind = type(obj)
        raise ValueError(
            f"{path} does not contain a pandas DataFrame or Series but a "
            f"{kind.__module__}.{kind.__qualname__}"
        )
    return obj
