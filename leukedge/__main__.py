"""`python -m leukedge` (and `torchrun -m leukedge train ...`)."""

from leukedge.cli import main

main()
