"""`python -m dvkit` runs the command-line interface."""

from dvkit.cli.main import main

main()
