"""``python -m bfcl_ext.standin``."""

from bfcl_ext.standin.cli import main

raise SystemExit(main())
