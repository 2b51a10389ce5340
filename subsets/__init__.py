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
* ``subsets.select``: ``check_fraction`` (exact ``Fraction``), ``fraction_counts``.
* ``subsets.pack``: ``pack_manifests(PackConfig(...)) -> PackResult``: Parquet shards of
  a manifest's images (``mimscale subsets pack``), nested fractions as prefixes.
* ``subsets.shards``: ``open_pack(location, filesystem=None) -> Pack`` (local path or
  URI: ``rows_of``, ``read_block``, ``read_rows``, ``verify``), ``epoch_order``.
* ``subsets.packview``: ``PackView(pack, keys, what)``: a manifest's rows in a pack
  (``read(j)`` → bytes, ``blocks``, ``epoch_order``), what the data loaders hold.
* ``subsets.slowfs``: ``latency_filesystem(delay_s)``: slow storage for benches.
* ``subsets.errors``: ``SubsetError`` (``exit_code = 2``).
"""
