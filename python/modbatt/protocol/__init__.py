"""The wire protocol, sans I/O.

Ids and frames, the firmware's facts, the module-bus catalogue, handshakes, key delivery and
control messages. Imports no bus and no role.
"""
