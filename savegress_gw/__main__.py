"""``python -m savegress_gw`` is the ``savegress-gw`` command."""

from savegress_gw.cli import main

raise SystemExit(main())
