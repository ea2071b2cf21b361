"""Paper figures and tables, and the ``adt-probe`` command line: the top of the data flow (rl -> adt_probe -> here)."""
