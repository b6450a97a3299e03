"""Leak-free train / val / test splits.

Order of operations, per split definition in params.yaml ``splits.<name>``:
1. keep the rows of its dataset (optionally only those with agreement >= min_agreement);
2. group rows by *normalised* text (case, Unicode form, whitespace and punctuation spacing
   folded); a group whose rows disagree on the label is dropped whole and reported as a
   conflict; other duplicates keep one row (the one with the highest agreement);
3. rows the publisher put in an official test split stay there, and a text that also
   appears outside it is removed from the other side (reported as a leak);
4. the rest is split, seeded, either stratified by fractions or per-class balanced.
Every row that does not reach a split is written to dropped.csv with its reason.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from finsent.core.labelset import LABELS
from finsent.core.schema import PerClass, SplitSpec

SPLIT_NAMES = ("train", "val", "test")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The key used to find duplicates: NFKC, casefolded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass
class SplitResult:
    parts: dict[str, pd.DataFrame]
    dropped: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop conflicting-label groups and extra copies; return (kept, dropped-with-reason)."""
    frame = frame.copy()
    frame["_key"] = frame["text"].map(normalise_text)
    # Conflicts are between labels; an unlabelled pool copy ("") of a labelled text is a duplicate.
    n_labels = frame["label"].where(frame["label"] != "").groupby(frame["_key"]).transform("nunique")
    conflicts = frame[n_labels > 1].copy()
    conflicts["reason"] = "conflicting labels for the same text: " + conflicts["_key"].map(
        conflicts.groupby("_key")["label"].agg(lambda s: "/".join(sorted(set(s)))))
    rest = frame[n_labels <= 1]   # 0: a group of unlabelled pool posts
    if "agreement" in rest and rest["agreement"].notna().any():
        order = rest.sort_values(["_key", "agreement"], ascending=[True, False], kind="stable")
    else:
        order = rest
    # Prefer the copy in an official test split so the publisher's test set stays whole.
    if "official_split" in order:
        order = order.assign(_test_first=(order["official_split"] != "test")).sort_values(
            ["_key", "_test_first"], kind="stable").drop(columns="_test_first")
    first = ~order.duplicated("_key", keep="first")
    kept_ids = set(order.loc[first, "id"])
    kept = frame[frame["id"].isin(kept_ids)]
    dups = rest[~rest["id"].isin(kept_ids)].copy()
    dups["reason"] = "duplicate text (kept " + dups["_key"].map(order.loc[first].set_index("_key")["id"]) + ")"
    leak = dups["_key"].map(order.loc[first].set_index("_key")["official_split"]).fillna("")
    mask = (leak == "test") & (dups.get("official_split", "") != "test")
    dups.loc[mask, "reason"] = "text also in the official test split (leak removed from train)"
    dropped = pd.concat([conflicts, dups], ignore_index=True)
    return kept.drop(columns="_key"), dropped.drop(columns="_key")


def _stratified(frame: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> dict[str, pd.DataFrame]:
    names = [n for n in SPLIT_NAMES if fractions.get(n, 0) > 0]
    total = sum(float(fractions[n]) for n in names)
    if total <= 0:
        raise ValueError("split fractions must have a positive train fraction")
    parts: dict[str, pd.DataFrame] = {}
    remaining = frame
    left = total
    for name in names[:-1]:
        share = float(fractions[name]) / left
        take, remaining = train_test_split(remaining, train_size=share, random_state=seed,
                                           stratify=remaining["label"])
        parts[name] = take
        left -= float(fractions[name])
    parts[names[-1]] = remaining
    return parts


def _balanced(frame: pd.DataFrame, per_class: PerClass,
              seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """N train / N test per class (train_test_split with the seed, as the Phi-2 / Llama-2 notebooks),
    then the val set from rows of that class in neither: no overlap, no replacement."""
    n_train, n_test, n_val = per_class.train, per_class.test, per_class.val
    parts: dict[str, list[pd.DataFrame]] = {n: [] for n in SPLIT_NAMES}
    shortfall: dict[str, int] = {}
    for label in LABELS:
        rows = frame[frame["label"] == label]
        if len(rows) < n_train + n_test:
            raise ValueError(f"balanced split: class '{label}' has {len(rows)} rows, needs {n_train + n_test} "
                             f"(train {n_train} + test {n_test}); lower splits.*.per_class")
        train, test = train_test_split(rows, train_size=n_train, test_size=n_test, random_state=seed)
        rest = rows.drop(index=train.index.union(test.index))
        # Never sample with replacement or from train/test rows (the notebooks' bug): a class
        # with fewer rows left than asked gets what is left, and the shortfall is reported.
        take = min(n_val, len(rest))
        if take < n_val:
            shortfall[label] = n_val - take
        parts["train"].append(train)
        parts["test"].append(test)
        parts["val"].append(rest.sample(n=take, random_state=seed, replace=False))
    out = {n: pd.concat(v) for n, v in parts.items()}
    out["train"] = out["train"].sample(frac=1.0, random_state=seed)
    return out, shortfall


def make_split(rows: pd.DataFrame, spec: SplitSpec, seed: int = 42) -> SplitResult:
    """Apply one ``splits.<name>`` definition to a converted dataset."""
    spec = SplitSpec.model_validate(spec)
    frame = rows.reset_index(drop=True)
    dropped_parts = []
    min_agreement = spec.min_agreement
    if min_agreement is not None and "agreement" in frame:
        keep = frame["agreement"].fillna(0) >= float(min_agreement) - 1e-9
        frame = frame[keep]
    kept, dropped = dedupe(frame)
    dropped_parts.append(dropped)

    strategy = spec.strategy
    shortfall: dict[str, int] = {}
    official = kept.get("official_split", pd.Series("", index=kept.index)).fillna("")
    use_official = spec.use_official_test and bool((official == "test").any())
    pool = kept[official != "test"] if use_official else kept
    if strategy == "stratified":
        fractions = spec.fractions.model_dump(exclude={"test"} if use_official else set())
        parts = _stratified(pool, fractions, seed)
    else:  # balanced (the schema allows no other strategy)
        parts, shortfall = _balanced(pool, spec.per_class, seed)
        unused = pool.drop(index=pd.Index(np.concatenate([p.index.to_numpy() for p in parts.values()])))
        dropped_parts.append(unused.assign(reason="not drawn by the balanced split (unused, kept out of all splits)"))
    if use_official:
        parts["test"] = kept[official == "test"]
    parts = {name: parts.get(name, kept.iloc[:0]).reset_index(drop=True) for name in SPLIT_NAMES}

    dropped_all = pd.concat(dropped_parts, ignore_index=True)
    report = {
        "rows_in": int(len(rows)),
        "rows_after_agreement_filter": int(len(frame)),
        "conflicting_rows": int(dropped["reason"].str.startswith("conflicting").sum()),
        "duplicates_removed": int(dropped["reason"].str.startswith("duplicate").sum()),
        "leaks_removed": int(dropped["reason"].str.contains("leak").sum()),
        "unused_rows": int(len(dropped_all) - len(dropped)),
        "strategy": strategy,
        "official_test": bool(use_official),
        "val_shortfall_per_class": shortfall,
        "counts": {name: part_counts(part) for name, part in parts.items()},
    }
    check_disjoint(parts)
    return SplitResult(parts=parts, dropped=dropped_all, report=report)


def part_counts(part: pd.DataFrame) -> dict[str, int]:
    counts = {lab: int((part["label"] == lab).sum()) for lab in LABELS}
    if (part["label"] == "").any():
        counts["unlabelled"] = int((part["label"] == "").sum())
    return counts | {"total": int(len(part))}


def exclude_other_tests(result: SplitResult, others: Mapping[str, pd.DataFrame]) -> SplitResult:
    """Remove from every part the texts of other splits' test parts (``splits.<name>.exclude_test_of``):
    a pool read from another file must not hold a post some model is scored on. The removed rows go to
    dropped.csv and their count, per other split, to the report (``test_overlaps_removed``)."""
    removed: dict[str, int] = {}
    parts, dropped = dict(result.parts), [result.dropped]
    for other, test in others.items():
        banned = set(test["text"].map(normalise_text))
        removed[other] = 0
        for name, part in parts.items():
            hit = part["text"].map(normalise_text).isin(banned)
            removed[other] += int(hit.sum())
            dropped.append(part[hit].assign(reason=f"text also in the test part of split '{other}' (leak removed)"))
            parts[name] = part[~hit].reset_index(drop=True)
    report = {**result.report, "test_overlaps_removed": removed,
              "counts": {name: part_counts(part) for name, part in parts.items()}}
    return SplitResult(parts=parts, dropped=pd.concat(dropped, ignore_index=True), report=report)


def check_disjoint(parts: Mapping[str, pd.DataFrame]) -> None:
    """Fail loudly if any normalised text sits in two splits (a leak)."""
    seen: dict[str, str] = {}
    for name, part in parts.items():
        for key in part["text"].map(normalise_text):
            other = seen.setdefault(key, name)
            if other != name:
                raise AssertionError(f"leak: text {key[:60]!r} is in both '{other}' and '{name}'")


def exclude_texts(frame: pd.DataFrame, others: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Drop rows whose normalised text occurs in any of ``others`` (e.g. the test sets a model will be
    scored on); returns (kept rows, number removed)."""
    banned = {normalise_text(t) for other in others for t in other["text"]}
    keep = ~frame["text"].map(normalise_text).isin(banned)
    return frame[keep].reset_index(drop=True), int((~keep).sum())
