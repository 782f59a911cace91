"""The tools on top of the roles: demo, monitor, decode, soak, benchmarks, role runners."""
