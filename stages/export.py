"""Stage export: the fine-tuned encoder as ONNX Runtime models, fp32 and dynamic int8 (params `export`).

Outputs: models/encoder_onnx/{fp32,int8}/ (each a self-contained model directory: model.onnx,
tokenizer, config, finsent_model.json) and metrics/export.json (sizes, export time, and each
export's agreement with the PyTorch fp32 model on validation posts). Their test-set metrics are in
evaluate (models encoder_onnx / encoder_int8, and metrics/backends.json).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.params import load_params  # noqa: E402
from finsent.core.paths import METRICS_DIR  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)  # validated before torch / onnx are imported

    from finsent.core.io import write_metrics
    from finsent.data.splits import load_split_union, sample_rows
    from finsent.inference.classifiers import EncoderClassifier, OnnxClassifier
    from finsent.inference.export import HEADLINE, check_exports, export_onnx, quantize_int8

    cfg = params.export
    out = Path(cfg.out)
    shutil.rmtree(out, ignore_errors=True)
    name = cfg.name or Path(cfg.model).name
    fp32 = export_onnx(cfg.model, out / "fp32", name=name, opset=cfg.opset)
    q = cfg.int8
    int8 = quantize_int8(out / "fp32", out / "int8", name=name, per_channel=q.per_channel,
                         reduce_range=q.reduce_range, keep_fp32=q.keep_fp32, batch_size=q.batch_size)
    print(f"export: fp32 {fp32['size_mb']} MB in {fp32['export_s']} s, int8 {int8['size_mb']} MB "
          f"in {int8['quantize_s']} s -> {out}")

    # Each export at the max length its card carries (the trained model's), against PyTorch fp32.
    texts = sample_rows(load_split_union(cfg.check.splits, "val"), cfg.check.n, params.seed)["text"]
    reference = EncoderClassifier(cfg.model)
    checks = check_exports(reference, {p: OnnxClassifier(str(out / p)) for p in ("fp32", "int8")}, texts.tolist())
    for precision, row in checks.items():
        print(f"export: {precision} vs PyTorch fp32 on {len(texts)} validation posts: same label "
              f"{row['label_agreement']:.2%}, max |dp| {row['max_abs_prob_diff']:.2g}")
    write_metrics({"model": cfg.model, "check_rows": len(texts),
                "fp32": {**fp32, **checks["fp32"]}, "int8": {**int8, **checks["int8"]}}, METRICS_DIR / "export.json",
                  HEADLINE)
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("export"):
        raise SystemExit(main())
