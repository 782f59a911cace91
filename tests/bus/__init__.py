"""The bus layer: ports, ISO-TP, traffic logs, receive filters."""
