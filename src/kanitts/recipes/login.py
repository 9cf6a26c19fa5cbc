"""`kanitts login`: the Hugging Face Hub and W&B, from the environment or a hidden prompt."""

from __future__ import annotations

from kanitts.accounts import login_all


def run(*, interactive: bool = True) -> int:
    results = login_all(interactive=interactive)
    for r in results:
        print(f"{r.service}: {r.detail}")
    # A skipped service (no token given) is not a failure: training runs without W&B.
    return 0 if all(r.ok or r.detail.startswith("skipped") for r in results) else 1
