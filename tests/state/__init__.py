"""Local state: two-slot stores, keystores, the audit log."""
