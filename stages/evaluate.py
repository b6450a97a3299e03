"""Stage evaluate: every model in params.yaml `evaluate.models` on every test set.

Writes metrics/headline/evaluate.json (the DVC metric: accuracy, macro-F1 and its interval of the models in
`evaluate.headline`), metrics/evaluate.json (every model's figures), metrics/timing/evaluate.json (each
model's wall time), metrics/per_class.json,
metrics/backends.json (each other runtime / precision of a model against it: macro-F1 change, label
agreement), metrics/student.json, metrics/reports/*.txt,
metrics/summary.md, DVC confusion plot data metrics/plots/confusion/*.csv, PNG figures in
metrics/plots/images/, and the predictions in predictions/<model>/<split>.csv.

`--workflow forum` evaluates params.yaml `workflows.forum.evaluate` instead: the baselines learn from
that workflow's teacher-labelled pool (data/labelled_forum/pool.csv), and everything is written under
metrics/forum/ and predictions_forum/.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finsent.core.paths import workflow_labelled_dir, workflow_metrics_dir, workflow_predictions_dir  # noqa: E402
from finsent.core.workflow_args import load_workflow, workflow_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = workflow_parser(__doc__)
    ap.add_argument("--predictions-dir", default=None, help="default: predictions/ (predictions_<workflow>/)")
    args = ap.parse_args(argv)
    params, flow = load_workflow("evaluate", args)  # validated before torch / transformers are imported
    metrics_dir = workflow_metrics_dir(args.workflow)
    plots_dir = metrics_dir / "plots"
    predictions_dir = Path(args.predictions_dir or workflow_predictions_dir(args.workflow))

    from finsent.core.io import read_interim, write_csv, write_json, write_metrics
    from finsent.data.splits import training_rows
    from finsent.evaluation.evaluate import (backend_report, evaluate_all, headline_patterns, split_metrics,
                                             student_report, summary_markdown, test_sets_from_params)
    from finsent.evaluation.plots import confusion_figure, metrics_by_class_figure, model_comparison_figure

    cfg = flow.evaluate
    if args.workflow:  # baselines learn from the workflow's teacher labels, as its student does
        train_df, labels = read_interim(workflow_labelled_dir(args.workflow) / "pool.csv"), "teacher"
    else:  # baselines see exactly the rows the encoder was trained on
        train_df, labels = training_rows(params.train, params.seed), params.train.labels
    test_sets = test_sets_from_params(cfg.test_sets)
    results, predictions, pairs, seconds = evaluate_all(cfg.models, test_sets, train_df, max_rows=cfg.max_rows,
                                                        seed=params.seed, resamples=cfg.bootstrap_resamples)

    report, per_class = split_metrics(results)
    for model, wall in seconds.items():  # a timing field: write_metrics puts it in metrics/timing/evaluate.json
        report[model]["wall_seconds"] = wall
    write_metrics(report, metrics_dir / "evaluate.json", headline_patterns(cfg.headline_models))
    label_file = metrics_dir / "label.json"
    label_metrics = json.loads(label_file.read_text()) if label_file.exists() else None
    write_json(student_report(results, labels, label_metrics, cfg.student, cfg.teacher), metrics_dir / "student.json")
    write_json(per_class, metrics_dir / "per_class.json")
    backends = backend_report(cfg.models, results, pairs, cfg.backend_tolerance)
    write_json(backends, metrics_dir / "backends.json")
    for name, rep in backends.items():
        for test, row in rep["per_test_set"].items():
            flag = "" if row["within_tolerance"] else "  <-- loses more than the tolerance"
            print(f"{name} vs {rep['reference']} on {test}: macro-F1 {row['delta_macro_f1']:+.4f}, "
                  f"same label {row['label_agreement']:.2%}{flag}")
    (metrics_dir / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    for sub in ("reports", "plots/confusion", "plots/images"):
        shutil.rmtree(metrics_dir / sub, ignore_errors=True)
    for model, per_test in results.items():
        for test, m in per_test.items():
            (metrics_dir / "reports").mkdir(parents=True, exist_ok=True)
            (metrics_dir / "reports" / f"{model}__{test}.txt").write_text(
                f"{model} on {test} (n={m['n']})\n\n{m['report']}", encoding="utf-8")
            write_csv(pairs[model][test], plots_dir / "confusion" / f"{model}__{test}.csv")
        for split, frame in predictions[model].items():
            write_csv(frame, predictions_dir / model / f"{split}.csv")
        confusion_figure(model, per_test, plots_dir / "images" / f"confusion_{model}.png")
        metrics_by_class_figure(model, per_test, plots_dir / "images" / f"metrics_by_class_{model}.png")
    model_comparison_figure(results, plots_dir / "images" / "models_macro_f1.png")
    print(summary_markdown(results))
    return 0


if __name__ == "__main__":
    from finsent.core.io import StageClock

    with StageClock("evaluate"):
        raise SystemExit(main())
