"""The command line: ``modbatt`` and its commands (``python -m modbatt``, the ``modbatt`` script).

`commands` holds the click commands, `app_commands` the app's, `base` what they share (-v/-q,
exit statuses and the advice for each failure, bus and config options) and `config` the
configuration files.
"""

from modbatt.cli.commands import EXIT_CODES, cli, main

__all__ = ["EXIT_CODES", "cli", "main"]
