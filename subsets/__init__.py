"""Deterministic ImageNet subsets, written as Parquet manifests (the first stage of mimscale).

Public API (import from the modules; this package imports nothing, so the CLI starts fast):

* ``subsets.manifest``: ``read_manifest(path, columns=None, *, as_pandas=False) ->
  (table, ManifestInfo)``, ``read_manifest_info(path) -> ManifestInfo`` (footer only),
  ``manifest_digest(path) -> str``; the column contract is in its docstring.
* ``subsets.demo``: ``build_demo(out_dir, *, manifests=True) -> Path``, the embedded
  digits data set (idempotent).
* ``subsets.build``: ``build_subsets(BuildConfig(...)) -> BuildResult``.
* ``subsets.verify``: ``verify_manifest(manifest, root, *, decode=False) -> VerifyReport``.
* ``subsets.keys``: ``path_key(path) -> int`` (the manifest ``key``), ``path_keys(paths)``.
* ``subsets.registry``: ``STANDARD_SUBSETS``, ``SOURCE_KINDS``, ``fraction_name``.
* ``subsets.errors``: ``SubsetError`` (``exit_code = 2``).
"""
