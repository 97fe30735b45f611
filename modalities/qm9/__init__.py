"""qm9 adapter package."""
