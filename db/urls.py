"""Database URLs: parsing ``--db`` values and keeping credentials out of sight.

Two rules hold everywhere in ``db/``:

* a URL is shown (log line, error message) only through :func:`mask_url`;
* any JSON written to the database (sweep configs, trial configs, artifact
  URIs) first goes through :func:`scrub_secrets`, so a config that carries
  ``--db`` or an MLflow tracking URI with a password stores ``***`` instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from alorectl.db.errors import DatabaseURLError

#: The backends the idempotent upserts are written for (dialect-specific
#: ``INSERT ... ON CONFLICT``); anything else is refused up front.
SUPPORTED_BACKENDS = ("sqlite", "postgresql+psycopg")

# scheme://user:password@host — the password is group 2.  Deliberately loose
# (any scheme) so MLflow/S3/HTTP URIs embedded in configs are caught as well.
# The password runs to the *last* "@" of the authority: a raw "@" inside it (user:pa@ss@host) is masked whole.
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)([^\s/]+)(@)")


def parse_db_url(value: str | URL) -> URL:
    """Turn a ``--db`` value into a SQLAlchemy URL for a supported backend.

    Accepted: ``sqlite:///path.db``, ``sqlite://`` (in memory),
    ``postgresql+psycopg://...``; ``postgresql://`` and ``postgres://`` are
    read as psycopg 3 (the driver alore installs; SQLAlchemy's default would be
    psycopg2); a bare path with no scheme is an SQLite file.
    """
    if isinstance(value, URL):
        url = value
    else:
        text = value.strip()
        if not text:
            raise DatabaseURLError("empty database URL; expected e.g. sqlite:///work/alore.db")
        if "://" not in text:  # a plain file path: the embedded default store
            url = URL.create("sqlite", database=str(Path(text).expanduser()))
        else:
            try:
                url = make_url(text)
            except (ArgumentError, ValueError) as exc:  # ValueError: a non-numeric port
                raise DatabaseURLError(f"malformed database URL {mask_text(text)!r}: {exc}") from None
            if "@" in (url.host or ""):
                # SQLAlchemy ends the password at its first "@" and takes the rest for the host: it would
                # connect to the wrong server and name that "host", a piece of the password, in its error.
                scheme, rest = text.split("://", 1)
                credentials, _, place = rest.rpartition("@")  # the host is after the last "@"
                user = credentials.split(":", 1)[0] if ":" in credentials else ""
                shown = f"{scheme}://{user if '@' not in user else '***'}:***@{place}"
                raise DatabaseURLError(f"database URL {shown!r} has a raw '@' in its user or password; "
                                       "percent-encode it as %40")
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername == "sqlite+pysqlite":
        url = url.set(drivername="sqlite")
    if url.drivername not in SUPPORTED_BACKENDS:
        raise DatabaseURLError(
            f"unsupported database backend {url.drivername!r} in {mask_url(url)}; "
            f"valid choices: {', '.join(SUPPORTED_BACKENDS)}"
        )
    return url


def mask_url(url: str | URL) -> str:
    """The URL as text with its password replaced by ``***``.

    Falls back to a regex mask when the text does not even parse, so an
    error message about a malformed URL cannot leak the password either.
    """
    if not isinstance(url, URL):
        # As typed: SQLAlchemy would split a raw "@" inside the password into the host, and show its rest.
        return mask_text(str(url))
    return url.render_as_string(hide_password=True)


def mask_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:pass@`` replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1***\3", text)


def scrub_secrets(value: Any) -> Any:
    """A copy of a JSON-like value with credentials in every URL string masked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: scrub_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_secrets(v) for v in value]
    return value
