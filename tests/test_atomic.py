"""Outputs appear whole or not at all; what killed runs left half-written is removed by the next
write into the folder, and only that (never a live run's, nor another host's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kanitts.atomic import HOST, atomic_file, remove_leftovers, write_atomically


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_leftovers_of_dead_runs_are_removed_and_said_live_ones_are_kept(tmp_path, live_pid, capsys):
    dead = dead_pid()
    folder = tmp_path / "checkpoints"
    merged = folder / f".exp-a.tmp-{dead}@{HOST}"  # a merged model a kill left half-written
    merged.mkdir(parents=True)
    (merged / "model.safetensors").write_bytes(b"\0" * 150_000)
    (folder / f".take-1.wav.tmp-{dead}@{HOST}").write_bytes(b"\0" * 1_000)
    (folder / f".exp-b.old-{dead}").mkdir()  # named as earlier versions did, without the host
    kept = [
        f".exp-c.tmp-{live_pid}@{HOST}",  # a run that is still writing
        f".exp-d.tmp-{dead}@another-host",  # its owner cannot be checked from here
        ".notes.tmp",  # not ours: no owner in the name
        "exp-e",
    ]
    for name in kept:
        (folder / name).mkdir()

    write_atomically(folder / "exp-f", lambda out: (out / "config.json").write_text("{}"))

    assert sorted(p.name for p in folder.iterdir()) == sorted([*kept, "exp-f"])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"note: removed 3 unfinished write(s) of runs that were killed, in {folder}: ")
    assert f".exp-a.tmp-{dead}@{HOST}" in lines[0] and lines[0].endswith("(151.0 KB freed)")
    assert remove_leftovers(folder) == []  # swept once per process


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "out" / "results.json"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".results.json.tmp-")
        tmp.write_text("1")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "1"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_finished_outputs_are_readable_as_the_umask_says(tmp_path):
    """safetensors writes 0600 files; a swapped-in checkpoint and an atomic file still get
    0666 less the umask, so a shared model folder is readable by its group and others."""
    import os

    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        write_atomically(
            tmp_path / "model", lambda folder: save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        )
        with atomic_file(tmp_path / "weights.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        os.umask(0o007)
        with atomic_file(tmp_path / "shared.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "weights.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "shared.safetensors").stat().st_mode & 0o777 == 0o660
