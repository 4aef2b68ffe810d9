from __future__ import annotations

from cas.cli import main

raise SystemExit(main())
