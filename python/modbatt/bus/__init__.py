"""The bus layer: python-can ports and their threads, ISO-TP messages, traffic logs.

Fault injection and the node loop too. Imports the protocol layer only.
"""
