"""Run the ``tree-seg`` command line as ``python -m tree_seg``."""

from tree_seg.cli.main import main

main()
