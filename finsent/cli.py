"""The `finsent` command. Pipeline stages run through `dvc repro`; this holds the tools around them.

    finsent model-path REF     where a model reference resolves to (pkg://, local path or hub id)
    finsent ci check|update    the CI metric check (see finsent.pipeline.ci)
    finsent serve --model REF  an OpenAI-compatible HTTP endpoint for a model (see finsent.serving.app)
    finsent predict --model REF INPUT -o OUTPUT
                               label a CSV / Parquet / JSONL file of any size (see finsent.inference.stream)
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="finsent", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("model-path", help="resolve a model reference")
    p.add_argument("ref")
    p = sub.add_parser("ci", help="CI metric check against ci/reference/")
    p.add_argument("action", choices=["check", "update"])
    p.add_argument("--tolerance", type=float, default=None)
    p = sub.add_parser("serve", help="serve a model through the OpenAI API shape")
    p.add_argument("--model", required=True, help="encoder dir, ONNX export dir, LoRA adapter dir, pkg:// or hub id")
    _model_options(p)
    p.add_argument("--model-id", help="the name clients ask for (default finsent-<model dir name>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--api-key-env", help="require `Authorization: Bearer $VAR` from clients (refuses to start "
                                         "when VAR is unset or empty)")
    p.add_argument("--no-auth", action="store_true", help="serve without a key on purpose (needed off loopback)")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="largest JSON request body (413 beyond)")
    p.add_argument("--max-file-mb", type=float, default=64.0, help="largest Batch API upload (413 beyond)")
    p.add_argument("--max-inputs", type=int, default=2048, help="most texts in one /v1/classify request")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--faults", help="inject failures for client tests, e.g. 429=0.2,500=0.1,timeout=0.05,offschema=0.1")
    p.add_argument("--fault-seed", type=int, default=0)
    p = sub.add_parser("predict", help="label a CSV / Parquet / JSONL file, streamed in chunks")
    p.add_argument("input", help="posts to label: .csv, .parquet or .jsonl (.csv.gz / .jsonl.gz too)")
    p.add_argument("-o", "--output", required=True, help="where the labels go: .csv, .parquet or .jsonl")
    p.add_argument("--model", default="models/encoder",
                   help="model reference (default: the fine-tuned encoder; its ONNX exports are "
                        "models/encoder_onnx/fp32 and /int8)")
    _model_options(p)
    p.add_argument("--text-column", default="text")
    p.add_argument("--keep-columns", type=_column_list, default=None,
                   help="comma-separated input columns to copy to the output (default: all; '' for none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=4096, help="rows read, sorted and written at a time")
    p.add_argument("--rejects", help="file for rows that cannot be classified (default: OUTPUT's stem + .rejects.csv)")
    p.add_argument("--model-id", help="the value of the output's model column (default: model name and backend)")
    p.add_argument("--input-format", choices=["csv", "parquet", "jsonl"])
    p.add_argument("--output-format", choices=["csv", "parquet", "jsonl"])
    p.add_argument("--summary", help="also write the run's summary (counts, posts/s, memory) to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("distributed (--engine ray: INPUT may be a directory or glob of shards, -o a directory)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: one process, streamed; ray: an actor pool on Ray Data (pip install 'finsent[ray]')")
    g.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, ray://head:10001); default: start "
                                         "a local Ray for this command")
    g.add_argument("--workers", type=int, help="actors, one model load each (default: CPUs / --threads)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPU actors: e.g. 1 (or 0.5 to share one)")
    g.add_argument("--rows-per-call", type=int, default=256, help="rows an actor labels per call")
    args = ap.parse_args(argv)

    if args.command == "serve":
        from finsent.serving.app import Limits, serve
        limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_file_bytes=int(args.max_file_mb * 2**20),
                        max_inputs=args.max_inputs)
        serve(args.model, kind=args.kind, base=args.base, host=args.host, port=args.port, model_id=args.model_id,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, faults=args.faults,
              fault_seed=args.fault_seed, api_key_env=args.api_key_env, no_auth=args.no_auth, dtype=args.dtype,
              max_length=args.max_length, threads=args.threads, limits=limits, log_level=args.log_level,
              label_map=args.label_map)
        return 0
    if args.command == "predict":
        return _predict(args)

    if args.command == "model-path":
        from finsent.core.refs import resolve_model_ref
        print(resolve_model_ref(args.ref))
        return 0
    from finsent.pipeline import ci
    extra = ["--tolerance", str(args.tolerance)] if args.tolerance is not None else []
    return ci.main([args.action, *extra])


def _model_options(p: argparse.ArgumentParser) -> None:
    """How a model is loaded and run: the same options for predict and serve (one inference path)."""
    from finsent.inference.classifiers import KINDS
    p.add_argument("--kind", default="auto", choices=KINDS,
                   help="auto: an ONNX export, a LoRA adapter or a sequence classifier, from the directory")
    p.add_argument("--base", help="base model of a LoRA adapter (default: the one its model card names)")
    p.add_argument("--dtype", default="auto", help="PyTorch backends: auto (bfloat16 where native), float32, bfloat16")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per post; longer posts are cut (and counted). Default: the length the model was "
                        "trained at (its model card)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch / ONNX Runtime (default: their own choice)")
    p.add_argument("--label-map", type=_label_map, default=None, metavar="NAME=LABEL,...",
                   help="a foreign classifier's label names -> ours, e.g. LABEL_0=negative,LABEL_1=neutral,"
                        "LABEL_2=positive (needed unless its names are negative/neutral/positive)")


def _column_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _label_map(text: str) -> dict[str, str]:
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=LABEL pairs separated by commas")
    return {k.strip(): v.strip() for k, v in pairs}


def _predict(args) -> int:
    from pathlib import Path

    from finsent.core.runtime import set_threads
    from finsent.inference.classifiers import load_classifier
    from finsent.inference.stream import check_targets, predict_file

    if args.model.startswith("models/") and not Path(args.model).exists():  # a pipeline output not built yet
        raise SystemExit(f"finsent predict: {args.model} does not exist; build it with `dvc repro` "
                         f"(or `dvc pull`), or name another model with --model")
    if args.engine == "ray":
        return _predict_ray(args)
    try:
        check_targets(args.input, args.output, args.rejects)  # before the slow model load
    except ValueError as exc:
        raise SystemExit(f"finsent predict: {exc}") from None
    set_threads(args.threads)
    try:
        classifier = load_classifier(args.model, args.kind, args.base, batch_size=args.batch_size,
                                     max_length=args.max_length, dtype=args.dtype, label_map=args.label_map)
    except ValueError as exc:  # a label map that is missing or incomplete: one line with the fix
        raise SystemExit(f"finsent predict: {exc}") from None
    try:
        summary = predict_file(classifier, args.input, args.output, text_column=args.text_column,
                               keep_columns=args.keep_columns, chunk_size=args.chunk_size, rejects_path=args.rejects,
                               model_id=args.model_id, input_format=args.input_format, output_format=args.output_format,
                               progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # bad input: one line naming the file and the fix
        raise SystemExit(f"finsent predict: {exc.args[0] if exc.args else exc}") from None
    _report(summary, args.summary)
    return 0


def _predict_ray(args) -> int:
    from finsent.inference.ray_engine import predict_ray, require_ray

    require_ray()  # one line with the install command, before anything slow
    if args.rejects:
        raise SystemExit("finsent predict: --rejects is for the local engine; the Ray engine writes its rejects "
                         "as shards under OUTPUT/rejects/")
    load = dict(kind=args.kind, base=args.base, batch_size=args.batch_size, max_length=args.max_length,
                dtype=args.dtype, label_map=args.label_map)
    try:
        summary = predict_ray(args.model, args.input, args.output, load=load, text_column=args.text_column,
                              keep_columns=args.keep_columns, chunk_size=args.chunk_size, workers=args.workers,
                              threads_per_worker=args.threads or 1, gpus_per_worker=args.gpus_per_worker,
                              batch_size=args.rows_per_call, input_format=args.input_format,
                              output_format=args.output_format or "parquet", model_id=args.model_id,
                              address=args.ray_address, progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise SystemExit(f"finsent predict: {exc.args[0] if exc.args else exc}") from None
    _report(summary, args.summary)
    return 0


def _report(summary: dict, summary_path: str | None) -> None:
    import json
    import sys

    if summary_path:
        from finsent.core.io import write_json
        write_json(summary, summary_path)
    print(json.dumps(summary, indent=2))
    if summary["rows_rejected"]:
        print(f"predict: {summary['rows_rejected']} rows could not be classified "
              f"({summary['rejected_by_reason']}); they are listed in {summary['rejects']}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
