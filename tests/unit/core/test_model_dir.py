"""The shipped model is found wherever a command runs, not only in the project folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_default_model_dir_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    code = "from services.core.settings import Settings; print(Settings().model_dir)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    ).stdout.strip()
    found = Path(out)
    assert found.is_absolute() and (found / "model.json").is_file()
