from hisd_edge.cli import main

raise SystemExit(main())
