"""Sub-commands of the ``cloudlab`` command line, one module per group."""
