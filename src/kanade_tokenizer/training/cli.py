"""``kanade-train {fit,validate,test} --config config/kanade/train/<recipe>.yaml``.

A LightningCLI over :class:`KanadePipeline` and :class:`AudioDataModule`; any config field can be
overridden on the command line (``--trainer.max_steps 1000``,
``--model.pipeline_config.ckpt_path exp/last.ckpt``, ``--data.train_config.batch_size 32``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch


def run(args: Sequence[str] | None = None):
    """Run the CLI in-process (``args`` as on the command line); returns the LightningCLI."""
    from lightning.pytorch.cli import LightningCLI

    from .data import AudioDataModule
    from .pipeline import KanadePipeline

    torch.set_float32_matmul_precision("high")
    return LightningCLI(
        KanadePipeline,
        AudioDataModule,
        args=list(args) if args is not None else None,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`kanade-train`; ``argv`` None reads the command line (LightningCLI's own parsing)."""
    from ..files import KanadeHubError
    from ..model import KanadeConfigError, KanadeWeightsError
    from ..scripts.export_safetensors import ExportError
    from .data import AudioDataError
    from .pipeline import PipelineConfigError

    user_errors = (
        AudioDataError, PipelineConfigError, ExportError, KanadeConfigError, KanadeWeightsError, KanadeHubError,
    )
    try:
        run(argv)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
