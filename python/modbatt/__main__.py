"""``python -m modbatt``: the same as the ``modbatt`` command."""

from modbatt.cli import main

raise SystemExit(main())
