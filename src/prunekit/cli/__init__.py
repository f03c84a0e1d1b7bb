"""The ``prunekit`` command line: one module per command, heavy imports inside ``run``."""
