"""Run test code under Triton's interpreter, on CPU, in a child process.

TRITON_INTERPRET=1 must be set before the kernels are decorated (at import), so it cannot be set in the pytest
process without leaking into the other tests, which import the model without it.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_in_interpreter(code: str, timeout: int = 300) -> str:
    """Run `code` with TRITON_INTERPRET=1; fail with the child's output if it fails, else return its stdout (also
    printed, so the measured errors show with pytest -s)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    print(proc.stdout)
    return proc.stdout
