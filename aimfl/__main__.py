"""`python -m aimfl ...` and `torchrun ... -m aimfl train ...`: the `aimfl` command line."""

from aimfl.cli import main

raise SystemExit(main())
