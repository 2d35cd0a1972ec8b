"""Pipelining for frame streams: frame t + 1 goes through the graph while frame t is
post-processed (onnxruntime and the C++ kernels release the GIL)."""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()
CLOSE_WAIT = 2.0  # seconds close() waits for a worker stuck in its source
_LIVE: weakref.WeakSet = weakref.WeakSet()  # workers of streams not closed yet


@atexit.register
def _stop_live_workers() -> None:
    """A stream abandoned without close() must not leave its worker inside
    onnxruntime while the interpreter shuts down."""
    for worker in list(_LIVE):
        worker.stop.set()
        worker.join(timeout=5)


class _Worker(threading.Thread):
    def __init__(self, target):
        super().__init__(target=target, name="clips4rt-stream", daemon=True)
        self.stop = threading.Event()


def pipelined(
    items: Iterable, produce: Callable[[Any], Any], consume: Callable[[Any], Any], depth: int = 2
) -> Iterator:
    """Yield ``consume(produce(x))`` for each x of ``items``, in order.

    ``produce`` runs in one worker thread, at most ``depth`` of its results waiting
    (memory stays bounded however long the stream). An exception raised by
    ``produce`` or by iterating ``items`` is raised here at the position of the item
    that caused it, after the results before it; the stream ends there. Closing the
    generator early (``close()``, ``break``, garbage collection) stops the worker
    and joins it before returning, waiting at most ``CLOSE_WAIT`` seconds: a worker
    blocked inside a stalled source (a camera that stopped delivering) is left to end
    at the source's next item (a daemon thread, told to stop; it holds no lock).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    q: queue.Queue = queue.Queue(maxsize=depth)

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for x in items:
                if stop.is_set():
                    return
                try:
                    item = (produce(x), None)
                except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                    item = (None, e)
                if not put(item) or item[1] is not None:
                    return
        except BaseException as e:  # noqa: BLE001 - the iterable itself failed
            put((None, e))
        finally:
            put(_DONE)

    worker = _Worker(work)
    stop = worker.stop
    _LIVE.add(worker)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            value, err = item
            if err is not None:
                raise err
            yield consume(value)
    finally:
        stop.set()
        deadline = time.monotonic() + CLOSE_WAIT
        while worker.is_alive() and time.monotonic() < deadline:
            try:  # unblock a worker waiting on a full queue
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
