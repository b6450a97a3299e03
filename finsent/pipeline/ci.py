"""The CI metric check: rerun a small fixed configuration and diff it against committed numbers.

    python -m finsent.pipeline.ci check   # scratch copy -> dvc repro (ci/overrides.yaml) -> diffs -> gate
    python -m finsent.pipeline.ci update  # the same run, then store its params and metrics in ci/reference/

CI runs the gate inside the test suite (tests/test_pipeline_e2e.py: the end-to-end tests share the same
scratch repo, so the tiny `dvc repro` runs once per CI run); `check` is the same thing on its own.

The scratch copy gets one commit holding the *reference* params and metrics, then the current
params (params.yaml merged with ci/overrides.yaml) are written and `dvc repro` runs; so
`dvc metrics diff` / `dvc params diff` show exactly what changed since the reference was taken.
The gate fails when any model's macro-F1 on any test set falls more than TOLERANCE below it, in the
default workflow and in the forum workflow (metrics/forum/evaluate.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from finsent.core.params import deep_merge, dump_params, read_yaml, validate
from finsent.core.paths import ROOT

TOLERANCE = 0.03  # absolute macro-F1: room for float differences between CPUs, not for regressions
CI_DIR = Path("ci")
OVERRIDES = CI_DIR / "overrides.yaml"
REFERENCE = CI_DIR / "reference"
GATED = ("evaluate.json", "forum/evaluate.json")   # every model's macro-F1 in these reports is gated


def metric_files(root: Path) -> list[str]:
    """The files kept in ci/reference/, relative to metrics/: every DVC metric dvc.yaml declares (headlines,
    DVCLive summaries), so `dvc metrics diff` in the gate compares against the reference, and the GATED reports."""
    stages = read_yaml(root / "dvc.yaml")["stages"]
    declared = [next(iter(entry)) if isinstance(entry, dict) else entry
                for stage in stages.values() for entry in stage.get("metrics", [])]
    return sorted({str(Path(path).relative_to("metrics")) for path in declared} | set(GATED))


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    # The interpreter's own bin/ first, so `dvc` and the stages' `python` are this environment's.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "finsent-ci", "GIT_AUTHOR_EMAIL": "ci@finsent",
           "GIT_COMMITTER_NAME": "finsent-ci", "GIT_COMMITTER_EMAIL": "ci@finsent"}
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, text=True, **kw)


def scratch_copy(root: Path, dest: Path) -> Path:
    """Copy the files git knows (committed or not, minus deletions) into a fresh git repo at dest."""
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], root,
                capture_output=True).stdout.split("\0")
    for rel in filter(None, files):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run(["git", "init", "-q"], dest)
    return dest


def ci_params(root: Path) -> dict[str, Any]:
    """params.yaml merged with ci/overrides.yaml (checked against the schema) as plain data, for dumping."""
    merged = deep_merge(read_yaml(root / "params.yaml"), read_yaml(root / OVERRIDES))
    validate(merged, f"params.yaml + {OVERRIDES}")
    return merged


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def macro_f1_drops(reference: dict, current: dict, tolerance: float = TOLERANCE) -> list[str]:
    """Lines describing every model/test set whose macro-F1 fell by more than ``tolerance``."""
    problems = []
    for model, per_test in reference.items():
        for test, ref in per_test.items():
            new = current.get(model, {}).get(test)
            if new is None:
                problems.append(f"{model}/{test}: missing from the new metrics (reference macro-F1 {ref['macro_f1']})")
            elif ref["macro_f1"] - new["macro_f1"] > tolerance:
                problems.append(f"{model}/{test}: macro-F1 {new['macro_f1']:.4f} < reference {ref['macro_f1']:.4f} "
                                f"- {tolerance}")
    return problems


def reproduce(root: Path, work: Path, with_reference: bool) -> Path:
    repo = scratch_copy(root, work / "repo")
    if with_reference and (root / REFERENCE / "params.yaml").exists():
        shutil.copy2(root / REFERENCE / "params.yaml", repo / "params.yaml")
        for name in metric_files(root):
            if (root / REFERENCE / name).exists():
                (repo / "metrics" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / REFERENCE / name, repo / "metrics" / name)
    commit_all(repo, "reference")
    dump_params(ci_params(root), repo / "params.yaml")
    run(["dvc", "repro"], repo)
    return repo


def gate(root: Path, repo: Path, tolerance: float = TOLERANCE) -> list[str]:
    """Print the params and metrics diffs of a ``reproduce(..., with_reference=True)`` repo against the
    reference, and return every gated macro-F1 that fell more than ``tolerance`` (empty: the gate passes)."""
    print("\n## dvc params diff (reference -> this commit, CI configuration)\n", flush=True)
    run(["dvc", "params", "diff", "--md"], repo)
    print("\n## dvc metrics diff (reference -> this commit, CI configuration)\n", flush=True)
    run(["dvc", "metrics", "diff", "--md", "--precision", "4"], repo)
    problems = []
    for name in GATED:
        if not (root / REFERENCE / name).exists():
            problems.append(f"{name}: no reference numbers; run `python -m finsent.pipeline.ci update`")
            continue
        reference = json.loads((root / REFERENCE / name).read_text())
        current = json.loads((repo / "metrics" / name).read_text())
        problems += [f"{name}: {line}" for line in macro_f1_drops(reference, current, tolerance)]
    return problems


def check(root: Path, tolerance: float = TOLERANCE) -> int:
    if not (root / REFERENCE / "evaluate.json").exists():
        print(f"ci: no reference numbers in {REFERENCE}/; create them with `python -m finsent.pipeline.ci update`")
        return 1
    with tempfile.TemporaryDirectory(prefix="finsent-ci-") as tmp:
        problems = gate(root, reproduce(root, Path(tmp), with_reference=True), tolerance)
    if problems:
        print(f"\nci: macro-F1 fell more than {tolerance} below the reference:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nci: every macro-F1 is within {tolerance} of the reference (or better)")
    return 0


def update(root: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="finsent-ci-") as tmp:
        repo = reproduce(root, Path(tmp), with_reference=False)
        shutil.rmtree(root / REFERENCE, ignore_errors=True)  # no stale file of an earlier layout stays
        (root / REFERENCE).mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / "params.yaml", root / REFERENCE / "params.yaml")
        for name in metric_files(root):
            (root / REFERENCE / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / "metrics" / name, root / REFERENCE / name)
    print(f"ci: reference numbers written to {REFERENCE}/; commit them")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finsent.pipeline.ci", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["check", "update"])
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = ap.parse_args(argv)
    root = ROOT
    sys.stdout.flush()
    return check(root, args.tolerance) if args.action == "check" else update(root)


if __name__ == "__main__":
    raise SystemExit(main())
