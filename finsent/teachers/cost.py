"""Tokens and money: the one token rule, prices, the Batch API discount, estimates and the ledger."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from finsent.core.prompts import messages
from finsent.core.schema import Price
from finsent.teachers.answers import Answer

BATCH_DISCOUNT = 0.5   # the OpenAI Batch API bills half the online price
LEDGER_FILE = "ledger.csv"


def price_of(prices: Mapping[str, Price], model: str) -> tuple[float, float]:
    """(USD per 1M input tokens, per 1M output tokens); unknown models cost 0 (a local server)."""
    p = prices.get(model) or Price()
    return float(p.input_per_1m), float(p.output_per_1m)


def mode_factor(mode: str) -> float:
    """What a request costs in ``mode`` relative to the online list price."""
    return BATCH_DISCOUNT if mode == "batch" else 1.0


def approx_tokens(text: str) -> int:
    """Token count without the model's tokenizer: about 4 characters per token (OpenAI's rule of thumb).
    The cost estimate and `finsent serve`'s ``usage`` both count this way."""
    return max(1, math.ceil(len(text) / 4))


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float]) -> float:
    """USD for a token count at (input, output) USD per 1M tokens."""
    return prompt_tokens * price[0] / 1e6 + completion_tokens * price[1] / 1e6


def usage_totals(answers: Sequence[Answer]) -> dict[str, Any]:
    """Prompt and completion tokens and USD summed over answers (for metrics and the ledger)."""
    return {"prompt_tokens": sum(a.prompt_tokens for a in answers),
            "completion_tokens": sum(a.completion_tokens for a in answers),
            "cost_usd": round(sum(a.cost_usd for a in answers), 6)}


def estimate_cost(texts: Sequence[str], price: tuple[float, float], completion_tokens: int = 8,
                  factor: float = 1.0) -> dict[str, float]:
    """Before a run: tokens (about 4 characters each, prompt included, 4 more per request for the
    chat format) and USD for ``texts`` at ``price`` times ``factor`` (see :func:`mode_factor`)."""
    prompt_tokens = sum(approx_tokens("".join(m["content"] for m in messages(t))) + 4 for t in texts)
    out_tokens = completion_tokens * len(texts)
    return {"rows": len(texts), "prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
            "usd": round(cost_usd(prompt_tokens, out_tokens, price) * factor, 6)}


LEDGER_COLUMNS = ["run_id", "started", "teacher_id", "paid_answers", "possibly_billed_attempts", "prompt_tokens",
                  "completion_tokens", "cost_usd", "possibly_billed_usd"]


def write_ledger(cache, cache_dir: str | Path) -> Path:
    """``<cache_dir>/ledger.csv``: one row per run and teacher, from the cache's spend table (which is
    written with every answer, so a killed run's spend is there too). Kept across runs, outside DVC."""
    ledger = Path(cache_dir) / LEDGER_FILE
    ledger.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(cache.spend_by_run(), columns=LEDGER_COLUMNS).to_csv(ledger, index=False)
    return ledger
