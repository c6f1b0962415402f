"""collector-pump: reads the Redis stream and writes to pluggable sinks."""
