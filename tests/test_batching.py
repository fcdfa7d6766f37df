"""The micro-batcher: concurrent requests share model calls, each gets its own answer, errors stay apart."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from catdog_model.batching import MicroBatcher


def test_concurrent_requests_share_calls_and_get_their_own_results():
    calls = []
    release = threading.Event()

    def run(images):
        calls.append(len(images))
        release.wait(5)  # hold the first call so the others queue behind it
        return [int(image[0, 0, 0]) for image in images]

    batcher = MicroBatcher(run, max_batch_size=8)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, batcher.submit(np.full((2, 2, 3), n,
                                                                                                np.uint8))))
               for n in range(9)]
    threads[0].start()
    while not calls:
        pass
    for thread in threads[1:]:
        thread.start()
    while batcher._queue.qsize() < 8:
        pass
    release.set()
    for thread in threads:
        thread.join()
    assert results == {n: n for n in range(9)}
    assert calls == [1, 8]


def test_a_failing_batch_fails_only_its_own_requests():
    def run(images):
        if (images == 255).any():
            raise ValueError("model broke")
        return ["ok"] * len(images)

    batcher = MicroBatcher(run)
    with pytest.raises(ValueError, match="model broke"):
        batcher.submit(np.full((2, 2, 3), 255, np.uint8))
    assert batcher.submit(np.zeros((2, 2, 3), np.uint8)) == "ok"


def test_a_closed_batcher_ends_its_thread_and_still_answers_late_requests():
    batcher = MicroBatcher(lambda images: [int(image[0, 0, 0]) for image in images])
    assert batcher.submit(np.full((2, 2, 3), 3, np.uint8)) == 3
    batcher.close()
    batcher._thread.join(timeout=5)
    assert not batcher._thread.is_alive()
    assert batcher.submit(np.full((2, 2, 3), 7, np.uint8)) == 7
