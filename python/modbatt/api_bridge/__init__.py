"""The Web4 API-Bridge: a resilient client, and an embedded server with the same REST contract.

- :mod:`modbatt.api_bridge.models`: the contract (request and response bodies).
- :mod:`modbatt.api_bridge.client`: `ApiBridgeClient`, on httpx, with bounded retries.
- :mod:`modbatt.api_bridge.store` and :mod:`~modbatt.api_bridge.ledger`: SQLite persistence
  with a hash-chained ledger.
- :mod:`modbatt.api_bridge.server`: the FastAPI application behind ``modbatt api-bridge serve``.
"""
