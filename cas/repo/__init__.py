"""The repository layer: a backend, its config and the index, and the machinery that reads and
writes blobs through them (pack writer, verified blob reader, per-host caches). No operation lives
here: snapshot, restore, gc and the rest are in :mod:`cas.ops`."""
