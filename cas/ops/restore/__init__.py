"""Restoring a stored tree to disk, one module per job:

* :mod:`~cas.ops.restore.walk`: :class:`~cas.ops.restore.walk.Restorer`, the destination opened and
  the tree walked directory by directory (how the restore stays inside the destination is told there);
* :mod:`~cas.ops.restore.survey`: what a directory of the destination already holds (``overwrite``);
* :mod:`~cas.ops.restore.entries`: a directory or symlink made, a file written, found matching or
  patched in place;
* :mod:`~cas.ops.restore.finish`: directories finished, their files awaited, mode and mtime applied;
* :mod:`~cas.ops.restore.state`: what those parts share;
* :mod:`~cas.ops.restore.report`: what a restore returns (:class:`~cas.ops.restore.report.RestoreReport`);
* :mod:`~cas.ops.restore.write`: one file created, filled, checked and named;
* :mod:`~cas.ops.restore.create`: a file created whole and named (what the writer process needs);
* :mod:`~cas.ops.restore.write_process`: a fresh restore's small files written by a child process;
* :mod:`~cas.ops.restore.local`: when a file in place matches its entry, and the chunks it gives up;
* :mod:`~cas.ops.restore.temps`: whose temporaries are whose;
* :mod:`~cas.ops.restore.delete`: removing what the tree lacks, on a pool of threads;
* :mod:`~cas.ops.restore.delete_process`: those removals made by a child process;
* :mod:`~cas.ops.restore.hash_ahead`: the destination's small files hashed by a child process
  ahead of the walk;
* :mod:`~cas.ops.restore.child`: how those child processes are started (only by a Python
  interpreter: an embedded one does their work itself) and spoken to.

Nothing is imported here: callers import from the modules, so the child processes
(:mod:`~cas.ops.restore.delete_process`, :mod:`~cas.ops.restore.hash_ahead`,
:mod:`~cas.ops.restore.write_process`) load only what they
use, and never SQLAlchemy.
"""
