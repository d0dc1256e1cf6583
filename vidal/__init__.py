"""The ``vidal`` command: one entry point above both halves (``vidal run | report | train | eval | convert``).

The top floor: it imports ``pipeline`` and ``model`` and nothing imports it. Each sub-command is the
``main(argv)`` of the module that ``python -m`` runs, so both forms take the same arguments.
"""

__version__ = "0.1.0"
