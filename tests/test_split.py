"""split: dedupe, conflicts, no leakage, stratified and balanced strategies, determinism (real data)."""
from __future__ import annotations

import pandas as pd
import pytest

from finsent.core.schema import SplitSpec
from finsent.data.split import check_disjoint, make_split, normalise_text


@pytest.fixture(scope="module")
def fpb_split(fpb, params):
    return make_split(fpb.rows, params.splits["fpb"], seed=42)


def test_conflicts_and_duplicates_dropped_and_reported(fpb_split):
    rep, dropped = fpb_split.report, fpb_split.dropped
    assert rep["conflicting_rows"] == 4 and rep["duplicates_removed"] == 6
    conflicts = dropped[dropped["reason"].str.startswith("conflicting")]
    assert conflicts["text"].str.startswith("TELECOMWORLDWIRE-7 April 2006-TJ Group").sum() == 2
    total = sum(len(p) for p in fpb_split.parts.values()) + len(dropped)
    assert total == 4846  # every row is in a split or in dropped.csv


def test_stratified_fractions_and_no_text_in_two_splits(fpb_split):
    parts = fpb_split.parts
    n = sum(len(p) for p in parts.values())
    assert abs(len(parts["test"]) / n - 0.2) < 0.01 and abs(len(parts["val"]) / n - 0.1) < 0.01
    for part in parts.values():  # class shares preserved within 1.5 points
        share = part["label"].value_counts(normalize=True)
        assert abs(share["negative"] - 604 / 4846) < 0.015
    check_disjoint(parts)
    keys = [set(p["text"].map(normalise_text)) for p in parts.values()]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_split_is_deterministic(fpb, params, fpb_split):
    again = make_split(fpb.rows, params.splits["fpb"], seed=42)
    assert all(again.parts[k]["id"].tolist() == fpb_split.parts[k]["id"].tolist() for k in fpb_split.parts)
    other = make_split(fpb.rows, params.splits["fpb"], seed=7)
    assert other.parts["test"]["id"].tolist() != fpb_split.parts["test"]["id"].tolist()


def test_balanced_300_300_50_without_overlap(fpb, params):
    res = make_split(fpb.rows, params.splits["fpb_balanced"], seed=42)
    for name, n in (("train", 300), ("test", 300)):
        assert res.parts[name]["label"].value_counts().to_dict() == {"negative": n, "neutral": n, "positive": n}
    val = res.parts["val"]["label"].value_counts().to_dict()
    assert val["neutral"] == 50 and val["positive"] == 50
    # 604 negatives - 600 used leave 4: the notebooks sampled 50 *with replacement* from rows that
    # overlapped train/test; here the shortfall is reported instead.
    assert val["negative"] == 4 and res.report["val_shortfall_per_class"] == {"negative": 46}
    ids = [set(p["id"]) for p in res.parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert not res.parts["val"]["id"].duplicated().any()
    check_disjoint(res.parts)


def test_official_test_kept_whole_and_leak_removed(tweets, params):
    res = make_split(tweets.rows, params.splits["tweets"], seed=42)
    assert len(res.parts["test"]) == 2388
    assert (res.parts["test"]["official_split"] == "test").all()
    assert res.report["leaks_removed"] == 1  # one train tweet repeats a test tweet (case/space folded)
    check_disjoint(res.parts)


def test_conflict_detection_folds_case_and_space():
    rows = pd.DataFrame({"id": ["a", "b", "c", "d"], "text": ["Profit up", "profit  UP", "Loss", "Loss"],
                         "label": ["positive", "neutral", "negative", "negative"],
                         "official_split": "", "agreement": None})
    res = make_split(pd.concat([rows] * 1, ignore_index=True),
                     SplitSpec(dataset="x", strategy="stratified", fractions={"train": 1.0}), seed=1)
    assert res.report["conflicting_rows"] == 2 and res.report["duplicates_removed"] == 1
    assert res.parts["train"]["id"].tolist() == ["c"]


def test_sample_rows_exact_stratified_and_seeded(fpb_split):
    from finsent.data.splits import sample_rows

    train = fpb_split.parts["train"]
    sub = sample_rows(train, 500, seed=3)
    assert len(sub) == 500 and not sub["id"].duplicated().any()
    shares = train["label"].value_counts(normalize=True)
    assert (abs(sub["label"].value_counts(normalize=True) - shares) < 0.003).all()
    assert sub["id"].tolist() == sample_rows(train, 500, seed=3)["id"].tolist()
    assert sample_rows(train, None, seed=3) is train


def test_exclude_texts_removes_test_text_in_any_case_or_spacing(fpb_split):
    from finsent.data.split import exclude_texts

    train, test = fpb_split.parts["train"], fpb_split.parts["test"]
    mixed = pd.concat([train.head(50), test.head(5).assign(text=lambda d: d["text"].str.upper() + "  ")])
    kept, removed = exclude_texts(mixed, [test])
    assert removed == 5 and len(kept) == 50


def test_llm_rows_are_evaluates_test_rows_and_train_on_no_test_text(fpb_split, tmp_path):
    """The LoRA stage's rows (finsent.training.lora.llm_rows): scored on exactly the rows evaluate scores,
    trained on the train split minus every text of a test set (here 7 test texts re-cased in the train part)."""
    from finsent.core.io import write_csv
    from finsent.core.schema import LLMSection
    from finsent.data.splits import test_rows
    from finsent.training.lora import llm_rows

    parts = fpb_split.parts
    leaked = parts["test"].head(7).assign(text=lambda d: d["text"].str.lower())
    files = {"fpb": parts, "pool": {"train": pd.concat([parts["train"].head(300), leaked]),
                                    "val": parts["val"], "test": parts["test"].head(0)}}
    for split, frames in files.items():
        for part, frame in frames.items():
            write_csv(frame, tmp_path / split / f"{part}.csv")
    cfg = LLMSection(hp_set="h", train_split="pool", eval_splits=["fpb"], max_train_rows=200, max_val_rows=40)
    rows = llm_rows(cfg, 150, seed=3, root=tmp_path)
    assert rows.removed == 7 and len(rows.train) == 200 and len(rows.val) == 40
    assert rows.tests["fpb"]["id"].tolist() == test_rows("fpb", 150, 3, root=tmp_path)["id"].tolist()
    assert not set(rows.train["text"].map(normalise_text)) & set(parts["test"]["text"].map(normalise_text))
