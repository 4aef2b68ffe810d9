"""Operations, one module each: building trees from disk and committing snapshots, restoring (a
package, :mod:`cas.ops.restore`, of one module per part), garbage collection, verify, repair,
sync/rebuild of the index, retention, and browsing stored trees.
Each takes the repository layer's objects; none imports another layer above it."""
