"""Batching concurrent requests onto the model."""
from __future__ import annotations

import asyncio
import time
from typing import Callable

import numpy as np


class MicroBatcher:
    """Gathers texts from concurrent requests into batches of at most ``max_batch``, waiting at
    most ``max_wait_ms`` for company, and runs the model in a worker thread (one batch at a time)."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], max_batch: int = 64, max_wait_ms: float = 5.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches = 0
        self.largest_batch = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def submit(self, texts: list[str]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            size = len(items[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            texts = [t for chunk, _ in items for t in chunk]
            try:
                probs = await asyncio.to_thread(self.predict, texts)
            except Exception as exc:  # every waiting request learns of it
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(texts))
            start = 0
            for chunk, future in items:
                if not future.done():
                    future.set_result(probs[start:start + len(chunk)])
                start += len(chunk)
