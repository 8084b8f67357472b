from smarthost.cli import main

raise SystemExit(main())
