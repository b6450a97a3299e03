"""What a teacher returns for a post, and the two ways a teacher run can stop early."""
from __future__ import annotations

from dataclasses import dataclass


class TeacherUnavailable(RuntimeError):
    """The teacher cannot run here (no API key, no server): reported as skipped, not a crash."""


class BatchPending(RuntimeError):
    """A submitted Batch API job has not finished yet; its id is kept and the next run collects it."""


@dataclass
class Answer:
    label: str | None                 # one of LABELS, or None when quarantined / failed
    status: str                       # ok | quarantined (answered outside the label set) | failed (gave up)
                                      # | missing (a recorded teacher has no answer for the post)
    reason: str = ""
    confidence: dict[str, float] | None = None   # probability per label, where the teacher gives them
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False

    @property
    def top_confidence(self) -> float | None:
        return max(self.confidence.values()) if self.confidence else None
