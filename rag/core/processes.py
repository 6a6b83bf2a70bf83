"""Process helpers shared by the supervisor of llama-server children and the parse processes."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None, *, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (children run it
    first).

    A child that runs this late (a spawned pool process, after its imports) passes its parent's
    pid: if that parent died before the request took effect, the child exits now."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        os._exit(0)
