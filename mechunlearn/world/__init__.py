"""The embedded synthetic knowledge world."""
