from celif_cli.main import main

raise SystemExit(main())
