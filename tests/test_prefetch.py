"""microface.utils.prefetch (an iterator run ahead in a thread) and microface.utils.runtime.split_threads."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from microface.utils.prefetch import prefetch
from microface.utils.runtime import split_threads


def test_items_arrive_in_order_and_are_made_in_another_thread():
    made_in = []

    def produce():
        for i in range(20):
            made_in.append(threading.current_thread().name)
            yield i * i

    assert list(prefetch(produce(), depth=3)) == [i * i for i in range(20)]
    assert set(made_in) == {"microface-prefetch"}


def test_the_producer_runs_ahead_while_the_consumer_works():
    produced = []

    def produce():
        for i in range(4):
            produced.append(i)
            yield i

    items = prefetch(produce(), depth=2)
    assert next(items) == 0
    deadline = time.monotonic() + 5.0
    while len(produced) < 3 and time.monotonic() < deadline:  # 0 taken, 1 and 2 waiting in the queue
        time.sleep(0.01)
    assert produced == [0, 1, 2]
    assert list(items) == [1, 2, 3]


def test_a_producer_error_is_raised_to_the_consumer_at_its_item():
    def produce():
        yield 1
        raise OSError("frame 2 of clip.mp4 is unreadable")

    items = prefetch(produce())
    assert next(items) == 1
    with pytest.raises(OSError, match="clip.mp4"):
        next(items)


def test_closing_early_stops_and_joins_the_producer():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    items = prefetch(produce(), depth=1)
    assert next(items) == 0
    items.close()
    assert not any(t.name == "microface-prefetch" for t in threading.enumerate())
    assert len(produced) <= 3  # the one taken, the one queued, at most one more made while closing


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        prefetch(iter([]), depth=0)


def test_split_threads_shares_the_budget_and_restores_it():
    import cv2

    torch_before, cv2_before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        torch.set_num_threads(4)
        with split_threads(2) as each:
            assert each == 2 and torch.get_num_threads() == 2 and cv2.getNumThreads() == 2
        assert torch.get_num_threads() == 4
        torch.set_num_threads(1)
        with split_threads(2) as each:
            assert each == 1 and torch.get_num_threads() == 1
        with pytest.raises(RuntimeError), split_threads(2):
            raise RuntimeError("a failed stage still restores the budget")
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == cv2_before
    finally:
        torch.set_num_threads(torch_before)
        cv2.setNumThreads(cv2_before)
