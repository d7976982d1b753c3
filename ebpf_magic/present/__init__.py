"""Presentation: widgets, live views and plots built from frames."""
