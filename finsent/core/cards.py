"""Model cards: every model directory the project writes describes itself in ``finsent_model.json``.

A consumer (evaluate, ``finsent predict``, ``finsent serve``, a local teacher, the export) takes the
facts it needs from the card instead of re-declaring them: the base model, the label order, the max
length the model was trained at, the dtype, the hyperparameter set and a fingerprint of the data it
learned from. A flag or a params override still wins where a caller gives one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from finsent.core.labelset import LABELS

CARD_FILE = "finsent_model.json"
# Models that carry no card (a hub classifier, the packaged base MiniLM) are run at this many tokens.
FALLBACK_MAX_LENGTH = 128


def write_card(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Write the card (label order included) into ``directory``; returns it."""
    card = {"labels": list(LABELS), **fields}
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return card


def read_card(directory: str | Path) -> dict[str, Any]:
    """The card of a model directory ({} for a model without one: a hub id, a file, a foreign directory)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rebuild the model or delete the card") from None


def data_fingerprint(texts: Iterable[str], labels: Iterable[str]) -> str:
    """sha256 over the (text, label) rows a model learned from, in order: which data made this model."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels):
        digest.update(f"{text}\x1f{label}\x1e".encode("utf-8"))
    return f"sha256:{digest.hexdigest()[:16]}"
