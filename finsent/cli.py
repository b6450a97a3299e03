"""The `finsent` command. Pipeline stages run through `dvc repro`; this holds the tools around them.

    finsent model-path REF     where a model reference resolves to (pkg://, local path or hub id)
    finsent ci check|update    the CI metric check (see finsent.ci)
    finsent serve --model REF  an OpenAI-compatible HTTP endpoint for a model (see finsent.serve)
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
    p.add_argument("--model", required=True, help="encoder dir, LoRA adapter dir, pkg:// or hub id")
    p.add_argument("--kind", default="auto", choices=["auto", "encoder", "llm", "causal_lm", "zeroshot"])
    p.add_argument("--base", help="base model of a LoRA adapter (default: params.yaml's llm hp set)")
    p.add_argument("--model-id", help="the name clients ask for (default finsent-<model dir name>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--api-key-env", help="require `Authorization: Bearer $VAR` from clients")
    p.add_argument("--faults", help="inject failures for client tests, e.g. 429=0.2,500=0.1,timeout=0.05,offschema=0.1")
    p.add_argument("--fault-seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.command == "serve":
        from .serve import serve
        serve(args.model, kind=args.kind, base=args.base, host=args.host, port=args.port, model_id=args.model_id,
              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, faults=args.faults,
              fault_seed=args.fault_seed, api_key_env=args.api_key_env)
        return 0

    if args.command == "model-path":
        from .models import resolve_model_ref
        print(resolve_model_ref(args.ref))
        return 0
    from . import ci
    extra = ["--tolerance", str(args.tolerance)] if args.tolerance is not None else []
    return ci.main([args.action, *extra])


if __name__ == "__main__":
    raise SystemExit(main())
