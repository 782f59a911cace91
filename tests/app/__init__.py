"""The app against a running pack."""
