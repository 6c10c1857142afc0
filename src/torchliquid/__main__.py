from torchliquid.cli import main

raise SystemExit(main())
