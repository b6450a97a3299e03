"""The command line of the stages that run per workflow (compare, label, train_student, evaluate).

Each takes ``--params`` and ``--workflow`` (a key of params.yaml ``workflows``; none = the default workflow,
whose sections are top level) and stops with the stage's name and the closest valid workflow when the name
is unknown, before anything heavy is imported.
"""
from __future__ import annotations

import argparse

from finsent.core.params import load_params
from finsent.core.paths import PARAMS_FILE
from finsent.core.schema import Params, Workflow


def workflow_parser(description: str | None, *, required: bool = False) -> argparse.ArgumentParser:
    """A stage's parser with ``--params`` and ``--workflow``; the stage adds its own options."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default=PARAMS_FILE)
    ap.add_argument("--workflow", required=required, default=None,
                    help="a key of params.yaml `workflows`" + ("" if required else " (default: the top level)"))
    return ap


def load_workflow(stage: str, args: argparse.Namespace) -> tuple[Params, Workflow | Params]:
    """The validated params and the sections of ``args.workflow``; an unknown workflow ends the stage
    (SystemExit naming the stage, the closest valid name and the defined ones)."""
    params = load_params(args.params)
    try:
        return params, params.workflow(args.workflow)
    except ValueError as exc:
        raise SystemExit(f"{stage}: {exc}") from None
