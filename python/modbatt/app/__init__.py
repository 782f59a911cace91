"""The Modbatt app role."""
