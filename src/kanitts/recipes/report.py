"""`kanitts report`: (re)build the HTML listening report from the eval outputs on disk.

The project's sweep reports (``sweeps/<name>/index.html``) are linked from it, and each of them
gets its link back to it.
"""

from __future__ import annotations

from pathlib import Path

from kanitts.config import EvalConfig, load_configs
from kanitts.config.schemas.sweep import SWEEPS_FOLDER
from kanitts.errors import UserError
from kanitts.evaluation.html_report import build_report
from kanitts.evaluation.results import RESULTS_JSON
from kanitts.files import check_output_folder


def check_report_dir(eval_cfg: EvalConfig) -> Path:
    """``paths.report_dir``, refused now if it cannot be written (it is swapped in whole)."""
    return check_output_folder(eval_cfg.paths.report_dir, "eval_config.yaml: paths.report_dir", replaced_whole=True)


def build(eval_cfg: EvalConfig) -> Path:
    """Read the eval outputs of ``audio_output_dir``, write ``report_dir``; the path of index.html."""
    results = Path(eval_cfg.paths.audio_output_dir) / RESULTS_JSON
    report_dir = check_report_dir(eval_cfg)
    if not results.is_file():
        raise UserError(f"no eval results at {results}: run `make eval` first")
    sweeps = sorted(Path(SWEEPS_FOLDER).glob("*/index.html"))
    index = build_report(results, report_dir, sweeps)
    if sweeps:
        from kanitts.sweeps.report import link_listening_report  # the sweep stack, only when there are sweeps

        for page in sweeps:
            link_listening_report(page, index)
    return index


def run(*, config_dir: Path) -> int:
    configs = load_configs(config_dir, kinds=("eval",))
    print(f"report: {build(configs.eval)}")
    return 0
