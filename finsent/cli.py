"""The `finsent` command. Pipeline stages run through `dvc repro`; this holds the tools around them.

    finsent model-path REF     where a model reference resolves to (pkg://, local path or hub id)
    finsent ci check|update    the CI metric check (see finsent.ci)
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
    args = ap.parse_args(argv)

    if args.command == "model-path":
        from .models import resolve_model_ref
        print(resolve_model_ref(args.ref))
        return 0
    from . import ci
    extra = ["--tolerance", str(args.tolerance)] if args.tolerance is not None else []
    return ci.main([args.action, *extra])


if __name__ == "__main__":
    raise SystemExit(main())
