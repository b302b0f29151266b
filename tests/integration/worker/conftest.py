from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.core.broker import RabbitBroker, Topology
from services.core.db import Database
from services.core.storage import LocalStorage
from tests.integration.worker.harness import ROOT, Node
from tests.integration.worker.stub_model import write_stub_model
from tests.services import require

# The repository's trained model, or another model folder for a trial run.
REAL_MODEL = Path(os.environ.get("NODULEFLOW_TEST_MODEL_DIR", ROOT / "models" / "nodule-seg"))


@pytest.fixture(scope="session")
def stub_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stub_model(tmp_path_factory.mktemp("stub-model"))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    require((REAL_MODEL / "model.json").is_file(), f"trained model in {REAL_MODEL}")
    return REAL_MODEL


def make_node(
    tmp_path: Path, database_url: str, rabbit_url: str, prefix: str, model_dir: Path
) -> Node:
    db = Database(database_url)
    db.upgrade()
    broker = RabbitBroker(rabbit_url, Topology(prefix=prefix), retry_delay=0.2)
    broker.declare()
    env = {
        "NODULEFLOW_DATABASE_URL": database_url,
        "NODULEFLOW_BROKER_URL": rabbit_url,
        "NODULEFLOW_BROKER_PREFIX": prefix,
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_MODEL_DIR": str(model_dir),
        "NODULEFLOW_PROVIDERS": "cpu",
        "NODULEFLOW_JOB_MAX_ATTEMPTS": "3",
        "NODULEFLOW_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "2",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    return Node(env, db, broker, LocalStorage(tmp_path / "storage"), logs)


@pytest.fixture
def node(
    tmp_path: Path, postgres_url: str, rabbit_url: str, rabbit_prefix: str, stub_model_dir: Path
) -> Iterator[Node]:
    """PostgreSQL + RabbitMQ + storage for worker processes running the stub model."""
    built = make_node(tmp_path, postgres_url, rabbit_url, rabbit_prefix, stub_model_dir)
    yield built
    built.stop()
    built.broker.close()
    built.db.dispose()


@pytest.fixture(scope="session")
def chest_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small synthetic chest CT (64 slices of 128×128) with two solid nodules."""
    from tests.unit.analysis.chest import Nodule, chest, write_volume

    spacing = (1.25, 1.5, 1.5)
    nodules = [Nodule((32, 57, 37), (5, 5, 5)), Nodule((24, 50, 91), (4, 4, 4))]
    hu = chest((64, 128, 128), spacing, nodules)
    paths, _ = write_volume(hu, tmp_path_factory.mktemp("chest"), spacing=spacing)
    return paths


@pytest.fixture
def real_node(
    tmp_path: Path, postgres_url: str, rabbit_url: str, rabbit_prefix: str, real_model_dir: Path
) -> Iterator[Node]:
    """Like ``node``, with the trained model of the repository."""
    built = make_node(tmp_path, postgres_url, rabbit_url, rabbit_prefix, real_model_dir)
    yield built
    built.stop()
    built.broker.close()
    built.db.dispose()


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Any:
    """A 60-slice 512×512 synthetic chest CT (a held-out seed: a 9 mm solid nodule and a
    smaller one) and its truth; made only when the trained model is there to analyse it."""
    from services.modeling.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("phantom"), seed=300003, slices=60, thickness=1.25)
