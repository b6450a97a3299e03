"""`finsent predict --engine ray`: the local engine's labels, rejects and counts from a Ray actor pool
(a real local Ray with 2 worker CPUs), and one clear line when Ray is not installed."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finsent.inference.classifiers import load_classifier
from finsent.inference.stream import predict_file

ray = pytest.importorskip("ray", reason="the Ray engine is an optional extra: pip install 'finsent[ray]'")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs for 2 single-threaded actors + 1 for reading and writing."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory, posts):
    """Three shards of real tweets in three formats, with bad records of every kind the local engine rejects."""
    d = tmp_path_factory.mktemp("shards")
    (d / "csv").mkdir()
    frame = pd.DataFrame({"id": [f"a{i}" for i in range(150)], "text": posts[:150]})
    frame.loc[[3, 40], "text"] = ["", "   "]
    frame.to_csv(d / "csv" / "part-0.csv", index=False)
    lines = [f'{{"id": "b{i}", "text": {pd.Series([t]).to_json(orient="values")[1:-1]}}}' for i, t in
             enumerate(posts[150:250])]
    lines[5], lines[17], lines[60] = "not JSON", '{"id": "b17", "text": null}', "[1, 2]"
    (d / "part-1.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    parquet = pd.DataFrame({"id": [f"c{i}" for i in range(120)], "text": posts[250:370]})
    parquet.loc[7, "text"] = None
    parquet.to_parquet(d / "part-2.parquet")
    (d / ".hidden.csv").write_text("text\nnever read\n")   # hidden files are not shards
    (d / "notes.txt").write_text("not a shard")
    return d


def _local(model_dir, shards, tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The local engine, shard by shard, with the Ray engine's ``file`` column added."""
    clf = load_classifier(str(model_dir))
    outs, rejects = [], []
    for name in ("csv/part-0.csv", "part-1.jsonl", "part-2.parquet"):
        out = tmp_path / (name.replace("/", "_") + ".out.csv")
        summary = predict_file(clf, shards / name, out, keep_columns=["id"], chunk_size=32, progress=False)
        outs.append(pd.read_csv(out, keep_default_na=False).assign(file=name))
        rejects.append(pd.read_csv(summary["rejects"], keep_default_na=False).assign(file=name))
    return pd.concat(outs, ignore_index=True), pd.concat(rejects, ignore_index=True)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_ray_engine_gives_the_local_engines_labels_and_rejects(local_ray, exported, shards, tmp_path, precision):
    """fp32: the same labels (and probabilities to float rounding); int8: the same labels too, because the
    int8 export pins its batch size (an answer never depends on which rows Ray batches it with)."""
    from finsent.inference.ray_engine import predict_ray

    model = exported[0] / precision
    summary = predict_ray(str(model), shards, tmp_path / "out", keep_columns=["id"], chunk_size=32, workers=2,
                          batch_size=40, progress=False, output_format="parquet")
    got = pd.read_parquet(tmp_path / "out" / "labels")
    got_rejects = pd.concat([pd.read_csv(f, keep_default_na=False)
                             for f in (tmp_path / "out" / "rejects").glob("*.csv")])
    want, want_rejects = _local(model, shards, tmp_path)
    key = ["file", "row"]
    got, want = got.sort_values(key, ignore_index=True), want.sort_values(key, ignore_index=True)
    assert list(got.columns) == ["file", "row", "id", "label", "p_negative", "p_neutral", "p_positive", "model"]
    assert got[key + ["id", "label", "model"]].equals(want[key + ["id", "label", "model"]])
    assert np.abs(got[["p_negative", "p_neutral", "p_positive"]].to_numpy()
                  - want[["p_negative", "p_neutral", "p_positive"]].to_numpy()).max() <= 1e-5
    cols = ["file", "row", "reason"]
    assert (got_rejects[cols].sort_values(cols, ignore_index=True)
            .equals(want_rejects[cols].sort_values(cols, ignore_index=True)))
    assert len(want_rejects) == 6 and summary["rows_rejected"] == 6
    assert summary["rows_in"] == 370 == summary["rows_predicted"] + summary["rows_rejected"]
    assert summary["labels"] == want["label"].value_counts().reindex(summary["labels"], fill_value=0).to_dict()
    assert summary["rejected_by_reason"] == want_rejects["reason"].value_counts().to_dict()
    assert summary["shards"] == 3 and summary["workers"] == 2 and summary["model"] == f"fitted:onnx-{precision}"


@pytest.mark.slow
def test_cli_ray_engine_writes_csv_shards_and_names_a_bad_shard(local_ray, exported, shards, tmp_path):
    from finsent.cli import main

    out = tmp_path / "labelled"
    assert main(["predict", "--engine", "ray", "--model", str(exported[0] / "int8"), str(shards / "part-*"),
                 "-o", str(out), "--output-format", "csv", "--keep-columns", "", "--workers", "1",
                 "--no-progress", "--summary", str(tmp_path / "summary.json")]) == 0
    written = pd.concat([pd.read_csv(f) for f in sorted((out / "labels").glob("*.csv"))])
    assert list(written.columns) == ["file", "row", "label", "p_negative", "p_neutral", "p_positive", "model"]
    assert set(written["file"]) == {"part-1.jsonl", "part-2.parquet"}
    assert len(written) == 220 - 4  # 3 bad JSONL lines, 1 null text
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.csv").write_text("body\nProfit rose .\n")
    with pytest.raises(SystemExit, match=r"x.csv: no column 'text'.*--text-column"):
        main(["predict", "--engine", "ray", "--model", str(exported[0] / "int8"), str(bad), "-o", str(tmp_path / "o"),
              "--no-progress"])
    with pytest.raises(SystemExit, match="would destroy the posts"):
        main(["predict", "--engine", "ray", "--model", str(exported[0] / "int8"), str(bad), "-o", str(tmp_path),
              "--no-progress"])


class _WhoLabelled:
    """A stand-in actor that records which process saw each row (the model does not matter here)."""

    def __init__(self):
        import os

        self.pid = os.getpid()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import time

        time.sleep(0.05)  # long enough that one actor cannot drain the queue alone
        return pd.DataFrame({"row": batch["__row"], "pid": self.pid})


@pytest.mark.slow
def test_one_big_shard_feeds_every_actor(local_ray, posts, tmp_path):
    """A single file is one reading task; its rows must still reach both actors (before the rows were cut
    into blocks of one actor call, all 2,000 went to one actor and the second idled)."""
    from finsent.inference.ray_engine import list_shards, read_dataset

    pd.DataFrame({"id": range(2000), "text": [posts[i % len(posts)] for i in range(2000)]}).to_csv(
        tmp_path / "one.csv", index=False)
    base, shards = list_shards(tmp_path / "one.csv")
    rows = read_dataset(local_ray, shards, base, want="rows", input_format=None, text_column="text", keep=["id"],
                        chunk_size=4096, block_rows=50)
    seen = rows.map_batches(_WhoLabelled, batch_size=50, batch_format="pandas",
                            compute=local_ray.data.ActorPoolStrategy(size=2), num_cpus=1).to_pandas()
    assert sorted(seen["row"]) == list(range(2000))
    per_actor = seen.groupby("pid").size()
    assert len(per_actor) == 2 and per_actor.min() >= 500, per_actor.to_dict()
