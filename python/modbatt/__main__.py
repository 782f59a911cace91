"""``python -m modbatt``: the same as the ``modbatt`` command."""

from modbatt.cli.commands import main

raise SystemExit(main())
