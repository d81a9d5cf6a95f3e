"""The README's example program runs and shows what it promises."""

import os
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


def test_operator_session_runs_on_a_scratch_store(tmp_path: Path) -> None:
    script = Path(__file__).parent.parent / "examples" / "operator_session.sh"
    env = {name: value for name, value in os.environ.items() if not name.startswith("GROVE_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for _ in range(2):  # a second run works too
        completed = subprocess.run(
            ["sh", str(script)], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert completed.returncode == 0, completed.stderr
        assert "handler: local_sqlite (from --handler)" in completed.stdout
        assert "the store works" in completed.stdout
        assert "could not take the lock (exit code 4)" in completed.stdout
        assert '"pk": "execution_lock.okta_audit.1f2e"' in completed.stdout
    # The user's default store is untouched and the scratch store is gone.
    assert not (tmp_path / "state").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
