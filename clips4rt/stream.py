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


class _Slot:
    """The newest item of a source read in a thread of its own (older ones dropped)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.item: Any = _DONE
        self.fresh = False
        self.ended = False
        self.error: BaseException | None = None
        self.dropped = 0


def newest(items: Iterable, counter: list | None = None) -> Iterator:
    """Iterate a live source so that each item asked for is the newest one there: a
    reader thread pulls ``items`` as fast as they come and keeps only the last; an item
    not asked for before the next arrives is dropped (``counter``, a list, gets the
    number dropped appended when the iteration ends). For cameras and streams slower to
    process than to deliver: what comes out is never older than one source period plus
    the time the consumer took for the item before. The source's last item and its
    error, if any, still come out; closing the iterator tells the reader to stop (a
    daemon thread: one stalled inside its source ends at the source's next item)."""
    slot = _Slot()

    def read() -> None:
        try:
            for x in items:
                with slot.cond:
                    if stop.is_set():
                        return
                    slot.dropped += slot.fresh
                    slot.item, slot.fresh = x, True
                    slot.cond.notify()
        except BaseException as e:  # noqa: BLE001 - re-raised by the consumer
            slot.error = e
        finally:
            with slot.cond:
                slot.ended = True
                slot.cond.notify()

    reader = _Worker(read)
    stop = reader.stop
    _LIVE.add(reader)
    reader.start()
    try:
        while True:
            with slot.cond:
                while not slot.fresh and not slot.ended:
                    slot.cond.wait()
                if slot.fresh:
                    item, slot.item, slot.fresh = slot.item, None, False
                elif slot.error is not None:
                    raise slot.error
                else:
                    return
            yield item
    finally:
        stop.set()
        if counter is not None:
            counter.append(slot.dropped)
        reader.join(timeout=CLOSE_WAIT)  # a healthy source: until its next item
