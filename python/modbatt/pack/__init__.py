"""The pack controller role."""
