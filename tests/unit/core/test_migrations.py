from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from services.core.db import Base, Database


def test_migrations_match_models(database_url: str) -> None:
    db = Database(database_url)
    db.upgrade()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    db.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
