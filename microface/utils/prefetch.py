"""Run an iterator ahead of its consumer in a background thread.

For producers whose work releases the GIL (OpenCV decoding and warps, DIS flow, numpy): ``microface reconstruct``
decodes, crops and computes flow for the next window on one core while its models run on the current window on
the other. Items arrive in order and unchanged, so the results are those of a plain loop.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

__all__ = ["prefetch"]

_DONE = object()
_POLL_S = 0.05  # how often a producer waiting on a full queue checks whether the consumer has gone


def _put(slots: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stops first; returns whether it was put."""
    while not stop.is_set():
        try:
            slots.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def prefetch(iterable: Iterable, depth: int = 1) -> Iterator:
    """The items of ``iterable``, produced in a background thread at most ``depth`` items ahead.

    Args:
        iterable: any iterable; it is iterated in the background thread only.
        depth: items produced ahead of the consumer (>= 1); each one held is memory (a window of frames).

    Returns:
        a generator of the same items in the same order. An exception raised by the producer is raised here, at the
        item where it happened; closing the generator (or an exception in the consumer's loop) stops the producer
        once its current item is done.
    """
    if depth < 1:
        raise ValueError(f"depth: expected >= 1 item ahead, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in iterable:
                if not _put(slots, (item, None), stop):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            _put(slots, (None, err), stop)
            return
        _put(slots, (_DONE, None), stop)

    def consume() -> Iterator:
        thread = threading.Thread(target=produce, name="microface-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, err = slots.get()
                if err is not None:
                    raise err
                if item is _DONE:
                    return
                yield item
        finally:
            stop.set()
            thread.join()

    return consume()
