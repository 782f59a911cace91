"""The pack controller role.

`controller` (:class:`PackController`, the one class that is the pack: it makes and runs its
parts), `keys` (its flash, states, the bootstrap and the app link's handshake, sans I/O),
`control` (one rule for every control message, and the thread that serves them), `pairing`
(the pairing exchange and the re-link handshake with a module), `modules` (registration, the
module table, heartbeat and polls, as the module firmware expects them) and `firmware` (the
firmware update's receiving end).
"""
