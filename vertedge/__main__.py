"""`python -m vertedge` runs the command line."""

from .cli import main

main()
