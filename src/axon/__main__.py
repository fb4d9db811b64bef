"""``python -m axon`` is the ``axon`` command."""

from axon.cli.main import main

main()
