"""Codec datasets -> training sequences (+ the summary of what was kept and dropped).

- :mod:`~kanitts.sequences.sources`: where a codec dataset comes from (Hub, folder, files);
- :mod:`~kanitts.sequences.steps`: filters, codebook columns -> frames -> ids, dedup, speaker
  prefix, special tokens, the `max_len` sample, each vectorised over a batch of rows;
- :mod:`~kanitts.sequences.build`: runs the steps over every dataset, concatenates, shuffles;
- :mod:`~kanitts.sequences.validation`: the held-out rows, per speaker;
- :mod:`~kanitts.sequences.cache`: the fingerprinted cache folder (training and held-out rows);
- :mod:`~kanitts.sequences.summary`: the statistics, printed table and length histogram.
"""

from kanitts.sequences.build import build_training_dataset
from kanitts.sequences.cache import load_validation
from kanitts.sequences.summary import RowStatus, TrainingDataReport

__all__ = ["RowStatus", "TrainingDataReport", "build_training_dataset", "load_validation"]
