from bfcl_ext.cli import main

raise SystemExit(main())
