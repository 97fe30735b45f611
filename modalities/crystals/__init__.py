"""crystals adapter package."""
