"""The battery module: pairing and secure links."""
