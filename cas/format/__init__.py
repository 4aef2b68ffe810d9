"""The format layer: how cas lays data out, with no I/O. Each module writes one versioned format
(docs/FORMAT.md): chunk boundaries, BLAKE3 names, blob codecs, packs, tree nodes, snapshot records,
the repository config, and the keys they are stored under."""
