from hybridkex.cli import main

raise SystemExit(main())
