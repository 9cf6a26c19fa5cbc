"""Length bucketing: the one rule for grouping variable-length items into padded batches.

Used by ``kanitts prepare`` (clips through the codec) and by ``KanadeModel.encode_batch``. It
takes plain lengths, not tensors or clips, so any caller maps its items to lengths and back;
it needs nothing beyond the standard library, so the tokenizer package can share it. Written
here because the rule is three comparisons on a sorted list; no library offers this
budget-and-ratio cut for a plain list.
"""

from __future__ import annotations

from collections.abc import Sequence


def bucket_by_length(
    lengths: Sequence[int],
    *,
    max_items: int | None = None,
    max_padded: int | None = None,
    max_padding: float | None = None,
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, longest first.

    A batch is padded to its first (longest) item, so its padded size is ``longest x count``.
    The next item starts a new batch when adding it would give more than ``max_items`` items,
    a padded size over ``max_padded``, or a padded size over ``(1 + max_padding)`` times the
    batch's real size (the sum of its lengths). None lifts a limit; an item longer than
    ``max_padded`` gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if (
                (max_items is not None and len(current) >= max_items)
                or (max_padded is not None and padded > max_padded)
                or (max_padding is not None and padded > (1 + max_padding) * (total + lengths[i]))
            ):
                groups.append(current)
                current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        groups.append(current)
    return groups


__all__ = ["bucket_by_length"]
