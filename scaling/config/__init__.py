"""Study and cell configs: dataclasses (``schema``), TOML + ``--set`` loading with errors at
file:line and dotted key (``parse``, ``load``), cross-field rules (``rules``), and cell ids
and manifest digests (``identity``). Imports no torch."""
