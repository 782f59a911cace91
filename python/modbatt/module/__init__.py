"""The battery module role: the firmware simulator and its secure wrapper."""
