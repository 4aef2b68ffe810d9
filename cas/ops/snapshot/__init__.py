"""Taking a snapshot of a directory on disk, one module per job:

* :mod:`~cas.ops.snapshot.take`: :func:`~cas.ops.snapshot.take.take_snapshot`, the tree stored
  (steps 1-3 of the write order), then committed through :func:`cas.ops.commit.commit`, stored
  again if garbage collection took blobs it reused;
* :mod:`~cas.ops.snapshot.walk`: :class:`~cas.ops.snapshot.walk.TreeBuilder`, the walk from disk to
  tree nodes, a stack of open directories, some handed to workers;
* :mod:`~cas.ops.snapshot.entries`: one entry of a directory stat'ed, decided by the filter, taken
  from the files cache or read, and read again when it changed while read;
* :mod:`~cas.ops.snapshot.file_reader`: one regular file opened, read, cut, hashed and checked
  unchanged;
* :mod:`~cas.ops.snapshot.filter`: what a snapshot leaves out
  (:class:`~cas.ops.snapshot.filter.SnapshotFilter`: ignore files, exclude/include, size, file
  systems);
* :mod:`~cas.ops.snapshot.workers`: a large tree's directories walked by worker processes.

Nothing is imported here: callers import from the modules, so a caller that needs only the filter
(the command line, the AIFlow managers) does not load the walk or the worker processes.
The claim and the fenced row commit are :mod:`cas.ops.commit` (a copy, a sync and a repair commit
there too); the tree entries spooled for the index are :class:`cas.ops.tree_index.TreeRowSpool`.
"""
