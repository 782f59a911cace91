"""Across every layer: attacks, power cuts, bus faults, one process per role.

And the threat model's citations of tests.
"""
