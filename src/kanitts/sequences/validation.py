"""The held-out rows of a dataset: drawn per speaker, seeded, before `max_len` samples the rest.

Drawn from the rows the filters kept and before the `max_len` sample, so changing `max_len`
(or sweeping over it) leaves the validation set as it was and validation losses stay
comparable across experiments. Each speaker gives its share, so a speaker with few rows is not
left out of validation by chance, and keeps at least one training row.
"""

from __future__ import annotations

import numpy as np

from kanitts.errors import UserError


def split_validation(
    kept: np.ndarray,
    speakers: np.ndarray,
    *,
    fraction: float | None,
    rows: int | None,
    seed: int,
    dataset: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of `kept` (row indices; `speakers` gives each one's speaker).

    `fraction` takes that share of every speaker's rows (at least one of a speaker with two or
    more); `rows` shares that many out over the speakers in proportion to their rows (largest
    remainders first, one at least from each speaker that can spare one when there are enough).
    Neither: nothing is held out.
    """
    if fraction is None and rows is None:
        return kept, kept[:0]
    groups = list(dict.fromkeys(speakers.tolist()))
    members = [kept[speakers == name] for name in groups]
    sizes = np.array([len(m) for m in members])
    most = sizes - 1  # every speaker keeps a training row
    if rows is not None:
        if rows > most.sum():
            raise UserError(
                f"dataset {dataset}: validation_rows {rows} leaves no training rows: {len(kept)} rows are "
                f"kept after filtering, across {len(groups)} speaker(s) (each keeps one for training)"
            )
        exact = rows * sizes / sizes.sum()
        # every speaker that can spare a row gives one, when there are enough to go round
        floor = (most > 0).astype(int) if rows >= np.count_nonzero(most) else 0
        counts = np.minimum(np.maximum(np.floor(exact).astype(int), floor), most)
        while counts.sum() > rows:  # the floors took too many: take back from the most over their share
            over = np.where(counts > floor, counts - exact, -np.inf)
            counts[int(np.argmax(over))] -= 1
        while counts.sum() < rows:  # largest remainders first, among speakers with rows to spare
            room = np.where(counts < most, exact - counts, -np.inf)
            counts[int(np.argmax(room))] += 1
    else:
        counts = np.minimum(np.maximum(np.rint(fraction * sizes).astype(int), 1), most)
    rng = np.random.default_rng(seed)
    train, held = [], []
    for group, count in zip(members, counts):
        order = rng.permutation(len(group))
        held.append(group[order[:count]])
        train.append(group[np.sort(order[count:])])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
