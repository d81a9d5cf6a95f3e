"""Grove: a log collector for security teams. This distribution provides its cache layer."""
