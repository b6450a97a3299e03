"""Batching concurrent requests onto the model, fairly.

Requests wait at most ``max_wait_ms`` for company, then run as one batch of at most ``max_batch``
texts in a worker thread. A large request is cut into pieces: each batch takes texts from every
waiting request in turn (round robin), so a one-line chat that arrives behind a 10,000-input
classify rides in the next batch instead of waiting for all 10,000.

When the server has been idle for ``idle_trim_s`` after work, freed heap memory is handed back to
the OS (``gc.collect`` and glibc's ``malloc_trim``): the buffers of a burst (batch shapes, a big
request's JSON) otherwise keep the process at its peak RSS long after the load is gone.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def release_heap() -> bool:
    """Collect garbage, then return freed heap pages to the OS where the C library can (glibc);
    False where it cannot."""
    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future
    done: int = 0                      # texts handed to the model so far
    parts: list[np.ndarray] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.texts) - self.done


class MicroBatcher:
    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 64, max_wait_ms: float = 5.0,
                 idle_trim_s: float = 2.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0
        self.largest_batch = 0
        self.trims = 0
        self.idle_trim_s = idle_trim_s    # idle this long after work: give memory back
        self._since_trim = 0              # texts run since the last trim
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(list(texts), future))
        return await future

    def _take(self, active: deque[_Job]) -> list[tuple[_Job, int, int]]:
        """The next batch as (job, start, stop) slices: every waiting request gets an equal share of
        ``max_batch`` (at least one text), in rotation. Room a small request leaves is not topped up
        with a big one's texts: a smaller batch finishes sooner, and the big request fills whole
        batches as soon as it is alone."""
        waiting = [job for job in active if job.left]
        share = max(1, self.max_batch // max(1, len(waiting)))
        plan: list[tuple[_Job, int, int]] = []
        room = self.max_batch
        for job in waiting:
            n = min(job.left, share, room)
            if n <= 0:
                break
            plan.append((job, job.done, job.done + n))
            job.done += n
            room -= n
        return plan

    async def _run(self) -> None:
        active: deque[_Job] = deque()
        while True:
            if not active:
                try:
                    first = await asyncio.wait_for(self.queue.get(), self.idle_trim_s if self._since_trim else None)
                except asyncio.TimeoutError:  # idle after work (responses sent by now): give memory back
                    self._since_trim = 0
                    self.trims += 1
                    await asyncio.to_thread(release_heap)
                    continue
                active.append(first)
                deadline = time.monotonic() + self.max_wait
                while sum(job.left for job in active) < self.max_batch:  # wait a little for company
                    try:
                        active.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic())))
                    except asyncio.TimeoutError:
                        break
            while not self.queue.empty():  # whoever arrived while the last batch ran joins the rotation
                active.append(self.queue.get_nowait())
            plan = self._take(active)
            texts = [t for job, a, b in plan for t in job.texts[a:b]]
            try:
                probs = await asyncio.to_thread(self.predict, texts)
            except Exception as exc:  # every request in this batch learns of it
                for job in {job for job, _, _ in plan}:
                    if not job.future.done():
                        job.future.set_exception(exc)
                    job.done = len(job.texts)
                    job.parts.clear()
                active = deque(job for job in active if not job.future.done())
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(texts))
            self._since_trim += len(texts)
            start = 0
            for job, a, b in plan:
                job.parts.append(probs[start:start + (b - a)])
                start += b - a
            for job in list(active):
                if job.left == 0:
                    active.remove(job)
                    if not job.future.done():
                        job.future.set_result(np.concatenate(job.parts) if job.parts else np.zeros((0, 3)))
            active.rotate(-1)  # the next batch starts with another request
