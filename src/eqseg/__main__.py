"""`python -m eqseg` runs the CLI."""

from eqseg.cli import main

main()
