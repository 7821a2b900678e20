from tunnelkeeper.cli import main

raise SystemExit(main())
