"""cas's compiled helper (Rust, built by ``pip install`` through setuptools-rust from ``Cargo.toml``
and ``src/`` beside this file): work on many files, or many ranges of one, done in one call that
leaves the GIL for all of it, and the decoding of tree nodes.

:mod:`cas.native.files` holds

- :func:`~cas.native.files.hash_files`: the small files of a directory opened, read and
  BLAKE3-hashed (the restore's hashing ahead, :mod:`cas.ops.restore.hash_ahead`). Python's open,
  fstat, read, hash and close cost about 38 µs a file here; the helper's, 10-13 µs, without
  holding the interpreter lock;
- :func:`~cas.native.files.range_digests`: the BLAKE3 of consecutive ranges of a file (a file in
  a restore's destination compared chunk by chunk, :func:`cas.ops.restore.local.examine_file`), on
  several threads, read into buffers it reuses;
- :func:`~cas.native.files.write_whole_files`: a directory's small files, verified already, each
  created (unnamed where it can be), written, given its mode and mtime and named
  (:meth:`cas.ops.restore.create.FileWriter.write_whole_many`: a restore's small files, on its
  threads or in its writer process);
- :func:`~cas.native.files.stat_names` and :func:`~cas.native.files.read_files`: a batch of a
  directory's names stat'ed (``lstat``), and its small files read whole and hashed, each only while it is
  still the regular file ``lstat`` saw (the snapshot's walk, :mod:`cas.ops.snapshot.batch`);
- :func:`~cas.native.files.scan_dir`: a directory listed, each name with its ``lstat``, in one
  call (the restore's survey of its destination, :mod:`cas.ops.restore.survey`);
- :func:`~cas.native.files.decode_canonical_node` (``src/trees.rs``): a tree node in canonical form
  decoded into ``Entry`` objects, with the checks of the Python decoder, which it leaves anything
  else to (:func:`cas.format.trees.decode_node`).

Calls whose work is short (a small directory, a small node) keep the interpreter lock: winning it
back from the restore's busy threads would cost more than the work.

It imports nothing of cas; everything above may use it.
"""
