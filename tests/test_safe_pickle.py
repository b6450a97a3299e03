"""Tests for finsent.data.safe_pickle: restricted loading of untrusted DataFrame pickles."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import subprocess
import zipfile
import zoneinfo
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from finsent.data import safe_pickle
from finsent.data.safe_pickle import ALLOWED_GLOBALS, RestrictedUnpickler, UnsafePickleError, load_dataframe


def _frames() -> dict[str, pd.DataFrame]:
    return {
        "object": pd.DataFrame({"a": pd.Series(["x", None, 3, 4.5], dtype=object)}),
        "str_default": pd.DataFrame({"a": ["up", "down", "flat", "up"]}),
        "str_python": pd.DataFrame({"a": pd.array(["x", None, "z", "w"], dtype=pd.StringDtype("python"))}),
        "str_pyarrow": pd.DataFrame({"a": pd.array(["x", None, "z", "w"], dtype=pd.StringDtype("pyarrow"))}),
        "int64": pd.DataFrame({"a": np.arange(4, dtype="int64")}),
        "float64": pd.DataFrame({"a": [0.5, np.nan, -1.25, 3.0]}),
        "bool": pd.DataFrame({"a": [True, False, True, False]}),
        "datetime64": pd.DataFrame({"a": pd.date_range("2020-01-01", periods=4)}),
        "datetime64_tz": pd.DataFrame({"a": pd.date_range("2020-01-01", periods=4, tz="Europe/Berlin")}),
        "category": pd.DataFrame({"a": pd.Categorical(["pos", "neg", "pos", "neu"])}),
        "nullable_Int64": pd.DataFrame({"a": pd.array([1, None, 3, 4], dtype="Int64")}),
        "range_index": pd.DataFrame({"a": [1, 2, 3, 4]}, index=pd.RangeIndex(10, 18, 2)),
        "str_index": pd.DataFrame({"a": [1, 2, 3, 4]}, index=pd.Index(["p", "q", "r", "s"], name="id")),
        "int_index": pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]}, index=pd.Index([5, 7, 9, 11])),
        "mixed": pd.DataFrame(
            {
                "text": ["beats estimates", "misses", "in line", None],
                "label": pd.Categorical(["positive", "negative", "neutral", "neutral"]),
                "score": [0.9, 0.1, 0.5, np.nan],
                "n": pd.array([1, 2, None, 4], dtype="Int64"),
                "ok": [True, False, True, True],
                "date": pd.date_range("2024-03-01", periods=4, freq="D"),
            },
            index=pd.Index(["a1", "a2", "a3", "a4"], name="doc"),
        ),
        "empty": pd.DataFrame(),
    }


FRAMES = _frames()

WRITERS: dict[str, Callable[[pd.DataFrame, Path], Path]] = {
    "to_pickle": lambda df, d: (df.to_pickle(d / "df.pkl"), d / "df.pkl")[1],
    "to_pickle_gz": lambda df, d: (df.to_pickle(d / "df.pkl.gz"), d / "df.pkl.gz")[1],
    **{
        f"dumps_p{proto}": (
            lambda df, d, proto=proto: (
                (d / f"df_p{proto}.pickle").write_bytes(pickle.dumps(df, protocol=proto)),
                d / f"df_p{proto}.pickle",
            )[1]
        )
        for proto in range(0, pickle.HIGHEST_PROTOCOL + 1)
    },
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_round_trip(kind: str, writer: str, tmp_path: Path) -> None:
    df = FRAMES[kind]
    path = WRITERS[writer](df, tmp_path)
    assert_frame_equal(load_dataframe(path), df)


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".pkl.gz", ".pkl.bz2", ".pkl.xz", ".pkl.zip"])
def test_compressions(suffix: str, tmp_path: Path) -> None:
    df = FRAMES["mixed"]
    path = tmp_path / f"data{suffix}"
    df.to_pickle(path)
    assert_frame_equal(load_dataframe(str(path)), df)


def test_compressed_file_with_plain_suffix_is_sniffed(tmp_path: Path) -> None:
    df = FRAMES["mixed"]
    path = tmp_path / "actually_gzipped.pkl"
    path.write_bytes(gzip.compress(pickle.dumps(df)))
    assert_frame_equal(load_dataframe(path), df)


def test_series_becomes_one_column_frame(tmp_path: Path) -> None:
    series = pd.Series([0.1, 0.2, 0.3], name="score")
    path = tmp_path / "s.pkl"
    series.to_pickle(path)
    assert_frame_equal(load_dataframe(path), series.to_frame())


def test_legacy_names_are_accepted(tmp_path: Path) -> None:
    """Names written by pandas 1.x/2.x and numpy 1.x still load (via lazy resolution)."""
    df = pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=pd.Index([10, 20, 30]))
    data = pickle.dumps(df, protocol=2)  # text GLOBAL opcodes: names can be swapped in place
    assert b"cpandas\nIndex\n" in data and b"cnumpy._core.multiarray\n" in data
    data = data.replace(b"cpandas\nIndex\n", b"cpandas.core.indexes.numeric\nInt64Index\n")
    data = data.replace(b"cpandas\nDataFrame\n", b"cpandas.core.frame\nDataFrame\n")
    data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path = tmp_path / "legacy.pkl"
    path.write_bytes(data)
    assert_frame_equal(load_dataframe(path), df)


def test_allowed_but_missing_name_is_a_clear_value_error(tmp_path: Path) -> None:
    try:
        from pandas.core.internals.blocks import ObjectBlock  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("installed pandas still has ObjectBlock")
    path = tmp_path / "old.pkl"
    path.write_bytes(b"\x80\x02cpandas.core.internals.blocks\nObjectBlock\n.")
    with pytest.raises(ValueError, match="ObjectBlock") as info:
        load_dataframe(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value)


# --- hostile pickles ---------------------------------------------------------------------


class _Payload:
    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...], str]]:
    return {
        "os.system": (os.system, (f"touch {marker}",), f"{os.system.__module__}.system"),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",), "builtins.exec"),
        "subprocess.Popen": (subprocess.Popen, (["touch", str(marker)],), "subprocess.Popen"),
    }


def _run_unrestricted(data: bytes) -> None:
    obj = pickle.loads(data)  # control only: proves the payload is live
    if isinstance(obj, subprocess.Popen):
        obj.wait()


@pytest.mark.parametrize("proto", [0, 2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("variant", ["os.system", "builtins.exec", "subprocess.Popen"])
def test_hostile_pickle_is_refused(variant: str, proto: int, tmp_path: Path) -> None:
    control_marker = tmp_path / "control_pwned"
    func, args, _ = _payloads(control_marker)[variant]
    _run_unrestricted(pickle.dumps(_Payload(func, args), protocol=proto))
    assert control_marker.exists(), "test payload should work against plain pickle"

    marker = tmp_path / "pwned"
    func, args, refused = _payloads(marker)[variant]
    path = tmp_path / f"evil_{proto}.pkl"
    path.write_bytes(pickle.dumps(_Payload(func, args), protocol=proto))

    with pytest.raises(UnsafePickleError) as info:
        load_dataframe(path)

    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message
    assert refused in message
    assert "CSV/Parquet" in message and "ALLOWED_GLOBALS" in message
    assert info.value.refused == refused
    assert isinstance(info.value, ValueError)


def test_payload_hidden_inside_a_dataframe_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    df = pd.DataFrame({"a": pd.Series([1, _Payload(os.system, (f"touch {marker}",))], dtype=object)})
    path = tmp_path / "evil.pkl.gz"
    df.to_pickle(path)
    with pytest.raises(UnsafePickleError, match="system"):
        load_dataframe(path)
    assert not marker.exists()


def test_getattr_only_reaches_allowlisted_attributes(tmp_path: Path) -> None:
    # builtins.getattr is mediated: ZoneInfo._unpickle is fine (tz-aware data needs it) ...
    ok = tmp_path / "tz.pkl"
    ok.write_bytes(pickle.dumps(zoneinfo.ZoneInfo("Europe/Berlin"), protocol=2))
    with ok.open("rb") as fh:
        assert RestrictedUnpickler(fh, source=ok).load() == zoneinfo.ZoneInfo("Europe/Berlin")
    # ... but it cannot be used to reach a method with side effects.
    evil = tmp_path / "getattr.pkl"
    evil.write_bytes(pickle.dumps(_Payload(getattr, (pd.DataFrame, "to_csv")), protocol=4))
    with pytest.raises(UnsafePickleError, match=r"pandas\.DataFrame\.to_csv") as info:
        load_dataframe(evil)
    assert str(evil) in str(info.value)


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "external-object" if isinstance(obj, str) else None

    path = tmp_path / "pid.pkl"
    with path.open("wb") as fh:
        _Pickler(fh).dump(["text"])
    with pytest.raises(UnsafePickleError, match="persistent id") as info:
        load_dataframe(path)
    assert str(path) in str(info.value)


def test_allowlist_has_no_code_or_io_entry_points() -> None:
    forbidden_names = {"eval", "exec", "compile", "getattr", "setattr", "__import__", "open", "input"}
    for module, name in ALLOWED_GLOBALS:
        root = module.split(".")[0]
        assert root not in {"os", "posix", "nt", "subprocess", "sys", "shutil", "io", "importlib", "runpy"}
        assert not (module == "builtins" and name in forbidden_names)
        leaf = name.split(".")[-1]
        assert not leaf.startswith(("read_", "load", "to_", "from_file")), (module, name)
    for target in safe_pickle._RENAMED.values():
        assert target in ALLOWED_GLOBALS


# --- wrong content / broken files ----------------------------------------------------------


def test_non_dataframe_object_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "array.pkl"
    path.write_bytes(pickle.dumps(np.arange(5)))
    with pytest.raises(ValueError, match="DataFrame") as info:
        load_dataframe(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value)
    assert "numpy.ndarray" in str(info.value)


@pytest.mark.parametrize("suffix", [".pkl", ".pkl.gz"])
def test_truncated_pickle_raises_value_error_naming_file(suffix: str, tmp_path: Path) -> None:
    full = tmp_path / f"full{suffix}"
    FRAMES["mixed"].to_pickle(full)
    data = full.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_dataframe(path)
    assert not isinstance(info.value, UnsafePickleError)
    assert str(path) in str(info.value)


def test_garbage_raises_value_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="corrupt") as info:
        load_dataframe(path)
    assert str(path) in str(info.value)


def test_zip_with_several_members_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.pkl", pickle.dumps(FRAMES["int64"]))
        archive.writestr("b.pkl", pickle.dumps(FRAMES["int64"]))
    with pytest.raises(ValueError, match="exactly one") as info:
        load_dataframe(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataframe(tmp_path / "nope.pkl")
