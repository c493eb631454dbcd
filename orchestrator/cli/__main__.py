"""``python -m alorectl.cli`` runs the CLI."""

from . import main

main()
