"""`kanitts report`: (re)build the HTML listening report from the eval outputs on disk."""

from __future__ import annotations

from pathlib import Path

from kanitts.config import EvalConfig, load_configs
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
    return build_report(results, report_dir)


def run(*, config_dir: Path) -> int:
    configs = load_configs(config_dir, kinds=("eval",))
    print(f"report: {build(configs.eval)}")
    return 0
