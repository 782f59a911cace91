"""The sans-I/O protocol layer: handshakes, key delivery, the catalogue, control messages."""
