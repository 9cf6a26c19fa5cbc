"""Hyperparameter sweeps: an experiment's `sweep:` section as an Optuna study.

- :mod:`~kanitts.sweeps.space`: the values of one trial, from a grid or Optuna search spaces;
- :mod:`~kanitts.sweeps.study`: the study in its database (created, resumed after a kill,
  shared by several processes), each trial trained as an experiment and scored on the
  held-out rows, hopeless ones pruned;
- :mod:`~kanitts.sweeps.pruning`: the Trainer callback that reports each evaluation to the trial;
- :mod:`~kanitts.sweeps.scoring`: an eval-set objective (WER, similarity, MOS) of a trained trial;
- :mod:`~kanitts.sweeps.checkpoints`: only the best ``keep_top_k`` trials keep their checkpoints;
- :mod:`~kanitts.sweeps.report`: the trials table, the best settings and the plots.

A grid is a study too (Optuna's GridSampler), so both methods share the storage, the resume,
the several-process mode and the report.
"""

from kanitts.sweeps.report import SweepReport, write_report
from kanitts.sweeps.study import SweepOutcome, run_sweeps, sweep_experiments

__all__ = ["SweepOutcome", "SweepReport", "run_sweeps", "sweep_experiments", "write_report"]
