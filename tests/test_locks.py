"""One run per experiment and per prepared output: a second is refused with who holds the lock;
the lock of a run that died is taken over, and that is said."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import kanitts
from kanitts.atomic import HOST
from kanitts.errors import UserError
from kanitts.locks import RunLock

_HOLD = (
    "import sys; from kanitts.locks import RunLock; "
    "lock = RunLock(sys.argv[1], 'held'); lock.acquire(); print('held', flush=True); sys.stdin.read()"
)


@contextmanager
def lock_held_elsewhere(path: Path):
    """Another process holding the lock at ``path``, as a second `kanitts` run would.

    Yields the process; it is killed (no cleanup runs, as in a crash) when the block ends.
    """
    src = str(Path(kanitts.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline() == b"held\n"
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_held_lock_is_refused_with_its_holder_and_taken_over_once_it_dies(tmp_path):
    path = tmp_path / ".runs" / "exp.lock"
    with lock_held_elsewhere(path) as holder:
        with pytest.raises(UserError) as refused:
            RunLock(path, "experiment 'exp'").acquire()
        message = str(refused.value)
        assert message.startswith("experiment 'exp' is in use by another run: ")
        assert f"pid {holder.pid} on host {HOST}, since " in message and "(command: -c " in message
    # killed without releasing: the kernel dropped the lock, its holder record is still there
    lock = RunLock(path, "experiment 'exp'")
    note = lock.acquire()
    assert f"took over the lock of experiment 'exp': the run that held it (pid {holder.pid} on host {HOST}" in note
    assert "is no longer running" in note
    with pytest.raises(UserError, match=f"pid {os.getpid()} on host"):
        RunLock(path, "experiment 'exp'").acquire()  # two holders in one process are refused too
    lock.release()
    assert not lock.info_path.exists()
    with RunLock(path, "experiment 'exp'") as again:  # a clean release leaves nothing to take over
        assert again.info_path.is_file()
    assert RunLock(path, "experiment 'exp'").acquire() is None


def test_a_second_prepare_into_one_output_is_refused_before_anything_is_written(tmp_path, tiny_codec_dir):
    from kanitts.prepare.options import CodecSpec, PrepareOptions
    from kanitts.prepare.pipeline import prepare_dataset

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"path": "missing.wav", "text": "never read"}\n')
    out = tmp_path / "out"
    options = PrepareOptions(input=str(manifest), output=str(out), progress=False)
    codec = CodecSpec(kind="nanocodec", weights=str(tiny_codec_dir))
    with lock_held_elsewhere(tmp_path / ".out.lock") as holder:
        with pytest.raises(UserError, match=f"^{out} is in use by another run: pid {holder.pid} on host"):
            prepare_dataset(options, codec)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", ".out.lock.json", "manifest.jsonl"]
