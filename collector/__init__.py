"""collector: per-request analytics from the app process into Redis.

The public surface is filled in by the reporting side (``Analytics``).
"""
