"""images adapter package."""
