"""`python -m fitwell.cli`: the same as the `fitwell` command."""

from fitwell.cli.main import main

raise SystemExit(main())
