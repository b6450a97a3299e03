"""The one source of truth for the sentiment label set.

Every stage, model head, prompt and metric uses these names and this order.
"""
from __future__ import annotations

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
LABEL2ID: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
ID2LABEL: dict[int, str] = {i: name for name, i in LABEL2ID.items()}

# Short descriptions of each class; used by the zero-shot embedding baseline
# (and, later, by prompts) so the wording lives in one place.
LABEL_DESCRIPTIONS: dict[str, str] = {
    "negative": "bad news for investors: losses, falling sales or profit, downgrades, layoffs, shares drop",
    "neutral": "a factual statement with no clear effect on the company's stock price or outlook",
    "positive": "good news for investors: growth, rising sales or profit, upgrades, new contracts, shares rise",
}


def normalise_label(value: object, mapping: dict | None = None) -> str | None:
    """Map a raw label to one of LABELS, or return None when it is unknown.

    ``mapping`` maps raw values (as strings, case-insensitive) to label names;
    without it the raw value must already be a label name.
    """
    if value is None:
        return None
    raw = str(value).strip()
    if raw == "" or raw.lower() == "nan":
        return None
    if mapping:
        lowered = {str(k).strip().lower(): v for k, v in mapping.items()}
        # Integer-like floats ("2.0") written by some exporters count as "2".
        key = raw.lower()
        if key not in lowered and key.endswith(".0") and key[:-2].lstrip("-").isdigit():
            key = key[:-2]
        mapped = lowered.get(key)
        return mapped if mapped in LABEL2ID else None
    raw = raw.lower()
    return raw if raw in LABEL2ID else None
