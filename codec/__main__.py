from codec.cli import main

raise SystemExit(main())
