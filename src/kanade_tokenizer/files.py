"""Output files appear whole or not at all: written under a temporary name, then renamed.

The same rule as the fine-tuning pipeline's outputs (one distribution, one rule): temporary
names carry their owner, and leftovers of killed runs are removed by the next write into the
folder (see :mod:`kanitts.atomic`).
"""

from kanitts.atomic import atomic_file as atomic_path

__all__ = ["atomic_path"]
