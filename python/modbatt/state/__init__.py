"""Local state: atomic two-slot stores, the audit log and the typed keystores."""
