"""`medasc ops | head`: a reader that stops early is not an internal error (it was exit 70
with a BrokenPipeError trace)."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_ends_quietly() -> None:
    process = subprocess.Popen([sys.executable, "-m", "medasl.cli", "ops"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(10)
    process.stdout.close()  # as `head` does after its lines
    err = process.stderr.read().decode()
    assert process.wait() == 0, err
    assert "Traceback" not in err and "internal" not in err
