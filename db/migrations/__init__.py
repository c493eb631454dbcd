"""Alembic environment and revisions of the results database (see :mod:`db.migrate`)."""
