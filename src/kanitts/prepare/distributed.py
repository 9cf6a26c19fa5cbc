"""Several processes on one prepare run: who encodes which shards, and the few collectives.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` in the
environment) every rank encodes the shards ``k % world_size == rank`` and rank 0 merges them; a
gloo process group carries only barriers and small messages (decisions, errors, fingerprints),
never data. ``rank``/``world_size`` given by hand split the work between separate runs that do
not talk to each other, so no group is made.

A group this module creates is destroyed by :meth:`Ranks.close` when the run ends, so a Python
caller (a notebook, a script that goes on to train) is not left holding one. A group that was
already there belongs to whoever made it and is left alone.
"""

from __future__ import annotations

import datetime
from typing import Any

from kanitts.errors import UserError
from kanitts.runtime import process_rank

#: how long a rank waits for the others at a barrier: encoding a rank's shards can take days
BARRIER_TIMEOUT = datetime.timedelta(days=7)


class Ranks:
    """Rank and world size (given, or from the launcher's env) and collectives when they exist."""

    def __init__(self, rank: int | None = None, world_size: int | None = None):
        launched = process_rank()
        self.world_size = world_size or launched.world_size
        self.rank = rank if rank is not None else launched.rank
        self.local_rank = launched.local_rank if launched.local_rank is not None else self.rank
        self._dist = None
        self._owns_group = False
        if not (0 <= self.rank < self.world_size):
            raise UserError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.world_size > 1 and world_size is None:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo", timeout=BARRIER_TIMEOUT)
                self._owns_group = True
            self._dist = dist

    @property
    def collective(self) -> bool:
        return self._dist is not None

    def close(self) -> None:
        """Destroy the process group if this object created it (idempotent)."""
        if self._owns_group and self._dist is not None and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._owns_group = False
        self._dist = None

    def barrier(self) -> None:
        if self._dist is not None:
            self._dist.barrier()

    def broadcast(self, value: Any) -> Any:
        if self._dist is None:
            return value
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def device(self, requested: str | None) -> str | None:
        """One GPU per rank: a bare or implied ``cuda`` becomes this rank's ``cuda:<local rank>``
        (``cuda:N`` and ``cpu`` are taken as given)."""
        if self.world_size == 1 or requested not in (None, "auto", "cuda"):
            return requested
        import torch

        if torch.cuda.is_available():
            index = self.local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return f"cuda:{index}"
        return requested if requested == "cuda" else None  # resolve_device names the missing GPU
