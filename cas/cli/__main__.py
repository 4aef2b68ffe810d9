"""``python -m cas.cli`` runs the ``cas`` command, as ``python -m cas`` does."""

from cas.cli import main

raise SystemExit(main())
