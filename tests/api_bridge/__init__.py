"""The API-Bridge: client, embedded server, store, access, schema."""
