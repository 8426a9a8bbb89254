"""The recorder's writer thread: a bounded queue of write batches drained off the sampling thread, with pinned host
buffers for asynchronous GPU→host copies. A ``None`` item on the queue is the stop sentinel; a batch item whose
function is an event's ``set`` is a drain marker (always run, even after an error)."""

from __future__ import annotations

import queue
import threading

import torch


class _PinnedPool:
    """Reusable pinned host buffers per (shape, dtype), so GPU→host copies are asynchronous and allocation-free."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape, dtype) -> torch.Tensor:
        with self._lock:
            free = self._free.get((tuple(shape), dtype))
            if free:
                return free.pop()
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)


class _Writer(threading.Thread):
    """Drains a bounded queue of batches of ``(fn, args, tensor, event)`` items: for each item, waits for the copy
    event, then calls ``fn(*args, tensor.numpy())`` (or ``fn(*args)`` without a tensor). The recorder hands over one
    batch per UNet forward.

    ``eager`` (GPU sampling): write as batches arrive. Lazy (CPU sampling, whose kernels already keep every core busy,
    so a concurrent writer only steals their time and stalls their parallel regions): hold batches until the queue
    is three-quarters full, holds ``HOLD_BYTES``, a drain is requested, or the recording ends — on a run that fits,
    the writes happen in one burst after sampling. Remembers the first error and drops
    everything after it, so a full disk never damages what was already written."""

    def __init__(self, maxsize: int, pool: _PinnedPool | None, eager: bool = True):
        super().__init__(name="attnlens-writer", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.pool = pool
        self.eager = eager
        self.go = threading.Event()  # lazy mode: set when the queue is nearly full, at a drain and at the end
        self.high_water = max(1, (maxsize * 3) // 4)
        self.held = 0  # bytes of tensors queued and not yet written
        self._held_lock = threading.Lock()

    HOLD_BYTES = 256 * 2**20  # lazy mode: write once this much is held (all heads, all tokens, big maps)

    def hand(self, batch: list[tuple]) -> None:
        """Queue one batch (blocks while the queue is full; a lazy writer is woken first so that it drains)."""
        n = sum(t.nbytes for _, _, t, _ in batch if t is not None)
        with self._held_lock:
            self.held += n
        if self.queue.full():
            self.go.set()
        self.queue.put((batch, n))
        if not self.eager and (self.queue.qsize() >= self.high_water or self.held >= self.HOLD_BYTES):
            self.go.set()

    def run(self) -> None:
        while True:
            if not self.eager:
                if self.queue.empty():
                    self.go.clear()
                    if not self.queue.empty():  # raced with a put that found the event still set
                        self.go.set()
                self.go.wait()
            item = self.queue.get()
            if item is None:
                return
            batch, n = item
            for fn, args, tensor, event in batch:
                try:
                    if self.error is None or fn.__name__ == "set":
                        if event is not None:
                            event.synchronize()
                        fn(*args) if tensor is None else fn(*args, tensor.numpy())
                except BaseException as exc:  # disk full, read-only, ...: reported to the sampling thread
                    self.error = exc
                finally:
                    if event is not None and self.pool is not None:
                        self.pool.give(tensor)
            with self._held_lock:
                self.held -= n
