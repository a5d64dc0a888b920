"""The ``orch`` command line: ``lxc``'s grammar (``remote:name``), tables, one-line errors."""
