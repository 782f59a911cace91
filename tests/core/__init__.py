"""The Rust core's Python face: ids, keys, sessions, the gateway, errors, vectors."""
