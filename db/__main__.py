"""``python -m db revision -m MSG`` / ``python -m db check``: schema tools for developers."""

from db.migrate import main

main()
