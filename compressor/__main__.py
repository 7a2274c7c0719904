"""`python -m compressor ...` is `svdc ...` (what torchrun launches)."""

from compressor.cli import main

main()
