"""A micro-batcher: concurrent requests share model calls.

Each request decodes its own image on its own thread, then waits here; one worker thread runs the model on
everything that queued up while the previous call ran. Alone, a request goes straight through (no waiting
window); under load, batches form by themselves. An error in one request never touches another's.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Callable

import numpy as np


_STOP = object()


class MicroBatcher:
    def __init__(self, run: Callable[[np.ndarray], list], max_batch_size: int = 16):
        """run: uint8 images (N, H, W, 3) → N results, in order."""
        self.run = run
        self.max_batch_size = max_batch_size
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray):
        """The result for one image, computed in a shared batch."""
        future: Future = Future()
        with self._lock:
            if self._closed:  # a request that picked this batcher just before a model swap still gets served
                return self.run(image[np.newaxis])[0]
            self._queue.put((image, future))
        return future.result()

    def close(self) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._lock:
            self._closed = True
            self._queue.put(_STOP)

    def _work(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in batch)
            batch = [item for item in batch if item is not _STOP]
            if not batch:
                continue
            try:
                results = self.run(np.stack([image for image, _ in batch]))
            except Exception as error:  # the model failed: every waiter in this batch hears why
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
