"""Tests in a real Linux kernel's CAN stack (vcan0, vcan1): collected only where SocketCAN is.

`make test-socketcan` runs them in the QEMU guest (scripts/socketcan-guest.sh); on a host that
has vcan0 and vcan1 itself they run there directly.
"""
