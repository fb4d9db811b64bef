"""The ``axon`` command: composes the roles from settings and runs them."""
