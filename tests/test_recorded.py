"""The recorded-answers teacher on the forum-posts seed's published answers (German posts)."""
from __future__ import annotations

import pandas as pd
import pytest

from finsent.data.convert import convert_dataset
from finsent.evaluation.metrics import compute_metrics
from finsent.teachers.recorded import MISSING, RecordedTeacher

FORUM = "data/raw/forum-posts-de-fine-tuning-ai-for-sentiments"
ANSWERS = f"{FORUM}/processed/forum_posts_100_test_classification_by_human_and_3_open_source_models_and_2_GPT_models.csv"
# The seed's table (SOURCE.md, recomputed from its CSVs): accuracy and macro-F1 on the 100 human-labelled posts.
SEED_TABLE = {"sentiment_oliverguhr": (0.46, 0.417), "sentiment_bardsai": (0.53, 0.468),
              "sentiment_lxyuan": (0.39, 0.307), "sentiment_gpt-3.5-turbo": (0.70, 0.699),
              "sentiment_gpt-4-turbo-preview": (0.79, 0.801)}


@pytest.fixture(scope="module")
def human(root):
    result = convert_dataset("forum_test", {"format": "csv", "label_column": "classification_by_human", "files": [
        {"path": f"{FORUM}/raw/forum_posts_100_test_classification_by_human.csv"}]}, root=root)
    assert result.stats["rows_out"] == 100 and result.stats["labels"] == {"negative": 34, "neutral": 45, "positive": 21}
    return result.rows


@pytest.mark.parametrize("column", list(SEED_TABLE))
def test_recorded_answers_reproduce_the_seed_table(root, human, column):
    teacher = RecordedTeacher.from_file(column.removeprefix("sentiment_"), root / ANSWERS, column)
    answers = teacher.label(human["text"].tolist(), None)
    assert all(a.status == "ok" for a in answers) and teacher.teacher_id.startswith("recorded:")
    m = compute_metrics(human["label"], [a.label for a in answers])
    assert (m["accuracy"], round(m["macro_f1"], 3)) == SEED_TABLE[column]


def test_missing_unknown_and_ambiguous_answers_are_counted_never_guessed(root, human, tmp_path):
    gpt = RecordedTeacher.from_file("gpt-4-turbo-preview", root / f"{FORUM}/raw/"
                                    "forum_posts_5000_train_classification_by_GPT_model_completed_raw.csv",
                                    "sentiment_gpt-4-turbo-preview", key="id")
    raw = pd.read_csv(root / f"{FORUM}/raw/forum_posts_5000_train_classification_by_GPT_model_completed_raw.csv",
                      dtype=str, keep_default_na=False)
    answers = gpt.label(raw["text"].tolist(), None, ids=raw["ID"].tolist())
    statuses = pd.Series([a.status for a in answers]).value_counts().to_dict()
    assert statuses == {"ok": 4999, "quarantined": 1}  # mixed-case labels folded; "Sure please" quarantined
    (bad,) = [a for a in answers if a.status == "quarantined"]
    assert "'Sure please'" in bad.reason
    # none of the 100 human-labelled posts is in the GPT-labelled 5,000: each is missing, not guessed
    missing = gpt.label(human["text"].tolist(), None, ids=["no-such-id"] * len(human))
    assert {a.status for a in missing} == {MISSING} and all(a.label is None for a in missing)
    path = tmp_path / "answers.csv"
    pd.DataFrame({"text": ["Gewinn steigt", " gewinn  steigt", "Verlust"],
                  "answer": ["positive", "negative", "bearish"]}).to_csv(path, index=False)
    twice = RecordedTeacher.from_file("x", path, "answer").label(["Gewinn steigt", "Verlust"], None)
    assert [a.status for a in twice] == ["quarantined", "quarantined"]
    assert "ambiguous" in twice[0].reason and "outside the label set" in twice[1].reason
    mapped = RecordedTeacher.from_file("x", path, "answer", label_map={"bearish": "negative"}).label(["Verlust"], None)
    assert mapped[0].label == "negative"
