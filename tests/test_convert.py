"""convert: the PhraseBank reader, tabular readers, label mapping and rejects, on the real files."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from finsent.data.convert import OUTPUT_COLUMNS, convert_dataset, read_phrasebank_file
from finsent.core.labelset import normalise_label

FPB_DIR = "data/raw/financial-phrasebank-v1.0"
TWEETS = "data/raw/twitter-financial-news-sentiment"


def test_phrasebank_counts_and_agreement_levels(fpb):
    rows = fpb.rows
    assert list(rows.columns) == OUTPUT_COLUMNS
    assert len(rows) == 4846 and fpb.stats["rejected"] == 0
    assert rows["label"].value_counts().to_dict() == {"neutral": 2879, "positive": 1363, "negative": 604}
    # The agreement files are nested: the rows at or above each level are exactly that file's rows.
    for level, expected in [(0.66, 4217), (0.75, 3453), (1.0, 2264)]:
        assert (rows["agreement"] >= level).sum() == expected
    allagree = rows[rows["agreement"] == 1.0]["label"].value_counts().to_dict()
    assert allagree == {"neutral": 1391, "positive": 570, "negative": 303}


def test_phrasebank_latin1_last_at_and_no_line_break_bytes(root, fpb):
    # Decoded as latin-1, never with replacement characters (the Phi-2 repo corrupted 84 rows).
    assert not fpb.rows["text"].str.contains("\ufffd").any()
    assert fpb.rows["text"].str.contains(r"[^\x00-\x7f]").sum() == 111
    assert not fpb.rows["text"].str.contains("\r|\n").any()
    raw = read_phrasebank_file(root / FPB_DIR / "Sentences_AllAgree.txt").rows
    assert len(raw) == 2264 and raw["raw_label"].isin(["positive", "neutral", "negative"]).all()


def test_bad_phrasebank_rows_go_to_rejects_with_file_row_and_reason(tmp_path):
    lines = ["Profit rose 5 % .@positive", "no separator here", "@neutral", "Sales fell.@bearish",
             "Email me @ home .@neutral"]
    (tmp_path / "s.txt").write_bytes("\r\n".join(lines).encode("latin-1") + b"\r\n")
    res = convert_dataset("x", {"format": "phrasebank", "files": [{"path": "s.txt", "agreement": 0.5}]},
                          root=tmp_path)
    assert res.rows["text"].tolist() == ["Profit rose 5 % .", "Email me @ home ."]  # split on the LAST '@'
    rej = res.rejects.set_index("row")
    assert set(rej.index) == {2, 3, 4}
    assert "no '@label'" in rej.loc[2, "reason"]
    assert rej.loc[3, "reason"] == "empty text"
    assert "unknown label 'bearish'" in rej.loc[4, "reason"]
    assert (rej["file"] == "s.txt").all()
    assert res.stats["rows_in"] == res.stats["rows_out"] + res.stats["rejected"] == 5


def test_tweets_csv_label_map_official_split_and_multiline(tweets, root):
    rows = tweets.rows
    assert len(rows) == 11931 and tweets.stats["rejected"] == 0
    assert tweets.stats["official_split"] == {"train": 9543, "test": 2388}
    train = rows[rows["official_split"] == "train"]["label"].value_counts().to_dict()
    assert train == {"neutral": 6178, "positive": 1923, "negative": 1442}  # 2 neutral, 1 bullish, 0 bearish
    # Newlines inside quoted fields survive (a line-based reader would break these rows apart).
    raw = pd.concat([pd.read_csv(root / TWEETS / f) for f in ("sent_train.csv", "sent_valid.csv")])
    assert rows["text"].str.contains("\n").sum() == raw["text"].str.strip().str.contains("\n").sum() > 200


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "pickle"])
def test_tabular_formats_agree(tmp_path, root, fmt):
    src = pd.read_csv(root / TWEETS / "sent_valid.csv").head(200)
    src.loc[3, "text"] = "   "          # empty after cleaning -> rejected
    src.loc[7, "label"] = 9              # unknown label -> rejected
    path = tmp_path / f"in.{fmt}"
    {"csv": lambda: src.to_csv(path, index=False), "parquet": lambda: src.to_parquet(path),
     "jsonl": lambda: src.to_json(path, orient="records", lines=True), "pickle": lambda: src.to_pickle(path)}[fmt]()
    spec = {"format": fmt, "files": [{"path": path.name}], "label_map": {0: "negative", 1: "positive", 2: "neutral"}}
    res = convert_dataset("t", spec, root=tmp_path)
    assert len(res.rows) == 198 and len(res.rejects) == 2
    assert res.rejects["row"].tolist() == [4, 8]
    assert res.rows["text"].iloc[0] == src["text"].iloc[0].strip()


def test_missing_column_names_file_and_fix(tmp_path):
    (tmp_path / "a.csv").write_text("sentence,label\nhello,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a\.csv.*\['text'\].*text_column"):
        convert_dataset("t", {"format": "csv", "files": [{"path": "a.csv"}]}, root=tmp_path)


def test_normalise_label():
    assert normalise_label("Positive") == "positive"
    assert normalise_label(2, {0: "negative", 2: "neutral"}) == "neutral"
    assert normalise_label("2.0", {2: "neutral"}) == "neutral"
    assert normalise_label("bullish") is None
    assert normalise_label(float("nan")) is None


def test_convert_stage_writes_rejects_and_metrics(tmp_path, root, monkeypatch):
    import yaml

    from stages import convert as stage  # noqa: F401  (stages/ is importable from the root)

    from finsent.core.params import read_yaml

    params = read_yaml(root / "params.yaml")  # the real file plus one small CSV dataset
    params["datasets"]["mini"] = {"format": "csv", "files": [{"path": str(tmp_path / "m.csv")}],
                                  "label_map": {"up": "positive", "down": "negative", "flat": "neutral"}}
    (tmp_path / "m.csv").write_text("text,label\nShares up,up\n,down\nFlat day,flat\nOdd,sideways\n", encoding="utf-8")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    stage.main(["--params", str(tmp_path / "p.yaml"), "--out-dir", str(tmp_path / "out"),
                "--metrics", str(tmp_path / "convert.json")])
    assert len(pd.read_csv(tmp_path / "out" / "mini.csv")) == 2
    rejects = pd.read_csv(tmp_path / "out" / "rejects" / "mini.csv")
    assert rejects["row"].tolist() == [2, 4]
    stats = json.loads((tmp_path / "convert.json").read_text())["mini"]
    assert stats["rejected"] == 2 and stats["rows_out"] == 2


# ---- one bad record never stops the stage (issue 14) ---------------------------------------------

def _convert(tmp_path, fmt: str, data: bytes, **spec):
    path = tmp_path / f"raw.{fmt}"
    path.write_bytes(data)
    return convert_dataset("d", {"format": fmt, "files": [{"path": str(path)}], **spec})


def test_bad_csv_records_become_rejects_with_file_record_and_reason(tmp_path):
    data = (b'text,label\n'
            b'Profit rose,positive\n'
            b'caf\xe9 sales fell,negative\n'          # latin-1 byte in a UTF-8 file
            b'a,b,c\n'                               # ragged
            b'"multi\nline ok",neutral\n'
            b'\n'                                    # blank line: counted, not a record
            b'Sales fell,negative\n'
            b'"unclosed,positive\nlast,neutral\n')   # unclosed quote swallows the rest
    result = _convert(tmp_path, "csv", data)
    assert result.rows["text"].tolist() == ["Profit rose", "multi\nline ok", "Sales fell"]
    reasons = result.rejects["reason"].tolist()
    assert any(r.startswith("not valid utf-8 (byte 35 of the file, line 3") for r in reasons)
    assert "3 fields where the header has 2 (line 4)" in reasons
    assert any(r.startswith("unreadable CSV record (unexpected end of data; lines 9-10)") for r in reasons)
    assert set(result.rejects["file"]) == {str(tmp_path / "raw.csv")}
    s = result.stats
    assert s["rows_in"] == s["rows_out"] + s["rejected"] and s["blank_lines"] == 1


def test_bad_jsonl_lines_become_rejects(tmp_path):
    data = b'{"text": "Profit rose", "label": "Positive"}\nnull\n[1,2]\n{oops\n\n{"text": "x", "label": "sideways"}\n'
    result = _convert(tmp_path, "jsonl", data)
    assert result.rows["label"].tolist() == ["positive"]  # mixed-case label normalised
    assert result.rejects["reason"].tolist() == ["not a JSON object (null, line 2)", "not a JSON object (list, line 3)",
                                                 "invalid JSON (Expecting property name enclosed in double quotes, "
                                                 "line 4)",
                                                 "unknown label 'sideways' (expected one of negative, neutral, positive)"]
    assert result.rejects["row"].tolist() == [2, 3, 4, 6]
    assert result.stats["rows_in"] == 5 == result.stats["rows_out"] + result.stats["rejected"]


def test_a_file_that_cannot_be_read_stops_with_its_name_and_the_fix(tmp_path):
    from finsent.data.convert import UnreadableFile

    with pytest.raises(UnreadableFile, match="nope.csv: no such file; fix its path"):
        convert_dataset("d", {"format": "csv", "files": [{"path": str(tmp_path / "nope.csv")}]})
    with pytest.raises(UnreadableFile, match="raw.parquet: cannot be read as Parquet"):
        _convert(tmp_path, "parquet", b"PAR1 not really")
    with pytest.raises(UnreadableFile, match=r"column\(s\) \['label'\] not found"):
        _convert(tmp_path, "csv", b"text,sentiment\nx,positive\n")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "pickle"])
def test_convert_counts_close_for_every_format(tmp_path, fmt):
    """Property over generated records (good, empty, missing, unknown-label, non-text, bad bytes,
    ragged, non-object lines): rows in = rows out + rejects, and every record is in one of the two."""
    import random

    rng = random.Random(fmt)
    texts = ["Profit rose", "", "   ", None, 42, "caf\u00e9 fell", "a,b\nc", "x" * 500]
    labels = ["positive", "Negative ", " neutral", "sideways", None, 2]
    for trial in range(4):
        n = rng.randint(1, 30)
        frame = pd.DataFrame({"text": [rng.choice(texts) for _ in range(n)],
                              "label": [rng.choice(labels) for _ in range(n)]})
        path = tmp_path / f"t{trial}.{fmt}"
        extra = 0
        if fmt == "csv":
            frame.astype(str).to_csv(path, index=False)
            with open(path, "ab") as fh:
                fh.write(b"ragged,row,here\n\xff\xfe bad bytes,positive\n")
            extra = 2
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
            with open(path, "ab") as fh:
                fh.write(b"null\n[1, 2]\n{broken\n\xff\n")
            extra = 4
        elif fmt == "parquet":
            frame.astype({"text": object, "label": object}).astype(str).to_parquet(path)
        else:
            frame.to_pickle(path)
        result = convert_dataset("d", {"format": fmt, "files": [{"path": str(path)}]})
        s = result.stats
        assert s["rows_in"] == n + extra == s["rows_out"] + s["rejected"], (s, n, extra)
        assert sorted([*result.rows["row"], *result.rejects["row"]]) == list(range(1, s["rows_in"] + 1))
