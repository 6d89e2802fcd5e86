"""Alembic environment for the service's own tables (run by ``service.db.migrate``).

The caller passes an open connection in ``config.attributes["connection"]``; our history lives in
``regsearch_alembic_version`` because Optuna's RDBStorage already uses ``alembic_version``.
"""

from alembic import context

from service.db import VERSION_TABLE
from service.models import Base
import service.tokens  # noqa: E402,F401 - registers regsearch_tokens on Base.metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic -c ...` from the command line: build an engine from the settings
    from service.config import Settings
    from service.db import create_engine

    connection = create_engine(Settings()).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("regsearch_"),
)
with context.begin_transaction():
    context.run_migrations()
