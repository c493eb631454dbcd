"""Alembic revisions, one file each; Alembic itself skips this ``__init__``.

The ``__init__`` files exist so that setuptools' package discovery ships the
revisions with the ``db`` package.
"""
