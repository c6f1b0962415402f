"""collector-daemon: drains the rings of the app's processes into Redis."""
