"""Django's SQLite backend with its connections kept for reuse (see base)."""
