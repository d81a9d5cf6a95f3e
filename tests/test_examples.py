"""The README's example program runs and shows what it promises."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "pointer_and_lock.py"


def test_pointer_and_lock_example_runs() -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=60
    )
    assert "lock taken until" in completed.stdout
    assert "a second collector cannot take it" in completed.stdout
    assert "lock released" in completed.stdout
