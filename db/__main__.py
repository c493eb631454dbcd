"""``python -m alorectl.db revision -m MSG`` / ``python -m alorectl.db check``: schema tools for developers."""

from alorectl.db.migrate import main

main()
