"""SIGTERM during training: what job schedulers, `timeout` and SLURM (time limit, preemption,
``--signal``) send some time before they kill a job.

The handler only notes the request. The run stops after the optimiser step under way (or the
evaluation under way), once every process has seen it: the processes of a torchrun run agree on
it with a one-number all-reduce after every step, so all of them stop after the same step, leave
no collective half done, and save one checkpoint with every process's RNG state, which resumes
exactly. Raising from the handler instead, as Ctrl-C does, could leave one process in a
gradient all-reduce that another has left. The caller then raises ``Terminated`` (exit 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist


class StopRequest:
    """Whether SIGTERM has arrived (noted by the handler ``installed()`` puts in place)."""

    def __init__(self) -> None:
        self.requested = False

    def _note(self, signum: int, frame: object) -> None:
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Catch SIGTERM while the block runs; the previous handler comes back after it.
        Python lets only the main thread set handlers: elsewhere SIGTERM keeps its action."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._note)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def agreed(self, device: torch.device, distributed: bool) -> bool:
        """True when any process has been asked to stop; in a distributed run every process
        must call this at the same point (it is a collective)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves SIGTERM to the main process, which stops
    the workers itself. (`timeout` and SLURM signal every process of the job; a worker that
    died of it would make the main process fail with 'DataLoader worker exited unexpectedly'
    before it could save.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
