"""`python -m bot` runs the `mobilize` command line."""

from bot.cli import main

main()
