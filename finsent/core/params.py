"""Reading params.yaml: YAML in, validated against the schema (finsent.core.schema) at the boundary."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml

from finsent.core.paths import PARAMS_FILE
from finsent.core.schema import Params


class ParamsError(SystemExit):
    """params.yaml does not fit the schema: each problem with its key path and the fix. A SystemExit,
    so a stage (or `dvc exp run`) stops with this message and exit code 1, not a traceback."""


def read_yaml(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """A YAML mapping as plain data; a clear error if the file is missing or malformed."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: parameter file not found; run from the project root or pass --params") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc}); fix the syntax at the position shown") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(data: Mapping[str, Any], source: str = PARAMS_FILE) -> Params:
    """The typed parameters, or ParamsError listing every problem as ``key.path: message``."""
    from pydantic import ValidationError

    try:
        return Params.model_validate(dict(data))
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            where = ""
            for part in map(str, err["loc"]):  # a union member shows as [kind=...] / [teacher=...]
                where += f"[{part}]" if part.startswith(("kind=", "teacher=")) else ("." if where else "") + part
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "required key is missing"
            lines.append(f"  {where or '(top level)'}: {message}")
        raise ParamsError(f"{source}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (or another file)."""
    return validate(read_yaml(path), str(path))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins; mappings merge)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dump_params(params: Mapping[str, Any], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        yaml.safe_dump(dict(params), fh, sort_keys=False, allow_unicode=True)
