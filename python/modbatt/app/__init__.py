"""The Modbatt app role.

`app` (:class:`~modbatt.app.app.App`, the one class that is the app: it makes its parts and
hands them to each workflow), `parts` (what every workflow works with), `channel` (requests to
the pack, retried), `answers` (the pack's answers, checked), `link` (the session handshake and
the link keeper), `bootstrap`, `pairing`, `recovery`, `firmware` and `operations` (one
workflow each), `telemetry` (what it hears on CAN 1) and `errors`.
"""
