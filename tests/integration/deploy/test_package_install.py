"""The container images install noduleflow as a wheel (not editable): it must be complete.

Builds the wheel the Dockerfiles build (from the same files they copy), installs it alone
into a temporary folder, and runs ``noduleflow db upgrade`` from there, outside the source
tree, so that missing package data (migrations, templates, static files) fails here rather
than in a deployed image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.integration.deploy.repo import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = "from services.cli import app; app()"


def test_wheel_is_complete_and_migrates_outside_the_source_tree(tmp_path: Path) -> None:
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # The Docker build context: only what the Dockerfiles COPY before `pip install .`.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "services", src / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("noduleflow-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "services/core/db/migrations/env.py",
        "services/core/db/migrations/script.py.mako",
        "services/core/db/migrations/versions/0001_core_schema.py",
        "services/reporter/api/templates/worklist.html",
        "services/reporter/api/static/worklist.js",
    ):
        assert required in names, required
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "docs/"))]
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NODULEFLOW_")}
    env = {
        **clean,
        "PYTHONPATH": str(target),
        "NODULEFLOW_DATABASE_URL": f"sqlite:///{work / 'nf.db'}",
    }
    probe = "import services, sys; print(services.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    upgrade = subprocess.run(
        [sys.executable, "-c", CLI, "db", "upgrade"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert "up to date" in upgrade.stdout
    assert (work / "nf.db").stat().st_size > 0
