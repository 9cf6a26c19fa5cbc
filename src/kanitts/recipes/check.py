"""`kanitts check-config`: validate every file of a config folder and print each problem.

The same loading every command runs (kanitts.config.load_configs), so what passes here is what
the other commands accept, and its warnings are the ones they print.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kanitts.config import CONFIG_FILES, load_configs
from kanitts.errors import ConfigError


@dataclass
class CheckReport:
    checked: list[str]
    errors: list[str]
    warnings: list[str]


def check_config_dir(config_dir: Path | str = "config") -> CheckReport:
    """Every file, every problem, never a traceback: a config error becomes the report's errors."""
    config_dir = Path(config_dir)
    try:
        configs = load_configs(config_dir)
    except ConfigError as exc:
        return CheckReport(checked=[], errors=exc.problems, warnings=[])
    return CheckReport(
        checked=[str(config_dir / name) for name in CONFIG_FILES.values()],
        errors=[],
        warnings=configs.warnings,
    )


def run(config_dir: Path | str = "config") -> int:
    """Print the warnings, then the errors (exit code 1) or each file checked (exit code 0)."""
    report = check_config_dir(config_dir)
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.errors:
        print(f"error: {line}")
    if report.errors:
        print(f"\n{len(report.errors)} error(s) in {config_dir}/", file=sys.stderr)
        return 1
    for name in report.checked:
        print(f"ok: {name}")
    print(f"All configuration files in {config_dir}/ are valid.")
    return 0
