"""True DVC dependencies by construction: each stage's code deps are its script's import closure.

    python -m finsent.pipeline.deps --check   # exit 1 and list what dvc.yaml misses or lists in vain
    python -m finsent.pipeline.deps --write   # rewrite the code deps of every stage in dvc.yaml

A stage runs ``python stages/<name>.py``; every ``finsent`` module that script can import (at the
top or inside a function: both run) is a file the stage's results depend on, and so is each
package's ``__init__.py`` on the way. Data, model and metrics deps in dvc.yaml are left alone;
only the lines naming ``stages/*.py`` or ``finsent/**.py`` are this tool's.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

from finsent.core.paths import ROOT

PACKAGE = "finsent"
CODE_DEP = re.compile(r"^(?P<indent>\s*)- (?P<path>(?:stages|finsent)/[\w/]+\.py)\b.*$")


def module_file(module: str, root: Path) -> Path | None:
    """The file of a ``finsent`` module (a package's ``__init__.py``), or None when there is none."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """``finsent`` modules a file imports anywhere in it (``from finsent.x import y`` counts
    ``finsent.x.y`` when that is a module itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def import_closure(script: Path, root: Path = ROOT) -> list[str]:
    """Project-relative paths of the script and every ``finsent`` file it can reach, sorted."""
    seen: set[Path] = {script.resolve()}
    todo = [script.resolve()]
    while todo:
        for module in imported_modules(todo.pop()):
            parts = module.split(".")
            for k in range(1, len(parts) + 1):  # the packages on the way run their __init__.py
                file = module_file(".".join(parts[:k]), root)
                if file is not None and file.resolve() not in seen:
                    seen.add(file.resolve())
                    todo.append(file.resolve())
    return sorted(p.relative_to(root.resolve()).as_posix() for p in seen)


def stage_scripts(dvc_yaml: dict) -> dict[str, str]:
    """Stage name -> the ``stages/*.py`` script its cmd runs."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        match = re.search(r"(stages/\w+\.py)", str(stage.get("cmd", "")))
        if match:
            out[name] = match.group(1)
    return out


def declared_code_deps(stage: dict) -> list[str]:
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return [d for d in deps if CODE_DEP.match(f"- {d}")]


def problems(root: Path = ROOT) -> list[str]:
    """One line per stage whose code deps in dvc.yaml differ from its script's import closure."""
    dvc_yaml = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    lines = []
    for name, script in stage_scripts(dvc_yaml).items():
        want = set(import_closure(root / script, root))
        have = set(declared_code_deps(dvc_yaml["stages"][name]))
        if want - have:
            lines.append(f"{name}: dvc.yaml misses {sorted(want - have)} (the stage imports them)")
        if have - want:
            lines.append(f"{name}: dvc.yaml lists {sorted(have - want)}, which the stage never imports")
    return lines


def rewrite(root: Path = ROOT) -> bool:
    """Replace each stage's code-dep lines in dvc.yaml by its import closure (comments elsewhere kept);
    returns whether the file changed."""
    path = root / "dvc.yaml"
    text = path.read_text(encoding="utf-8")
    scripts = stage_scripts(yaml.safe_load(text))
    out: list[str] = []
    stage = None
    in_deps = False
    for line in text.splitlines():
        head = re.match(r"^  (\w[\w-]*):\s*$", line)
        if head:
            stage, in_deps = head.group(1), False
        if stage in scripts and re.match(r"^    deps:\s*$", line):
            out.append(line)
            out.extend(f"      - {p}" for p in import_closure(root / scripts[stage], root))
            in_deps = True
            continue
        if in_deps:
            if CODE_DEP.match(line):
                continue
            if not re.match(r"^      ", line):
                in_deps = False
        out.append(line)
    new = "\n".join(out) + "\n"
    changed = new != text
    if changed:
        path.write_text(new, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m finsent.pipeline.deps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="report stages whose code deps are wrong")
    group.add_argument("--write", action="store_true", help="rewrite the code deps in dvc.yaml")
    ap.add_argument("--root", default=str(ROOT))
    args = ap.parse_args(argv)
    root = Path(args.root)
    if args.write:
        print("dvc.yaml rewritten" if rewrite(root) else "dvc.yaml already up to date")
        return 0
    found = problems(root)
    for line in found:
        print(line)
    if found:
        print("fix: python -m finsent.pipeline.deps --write", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
