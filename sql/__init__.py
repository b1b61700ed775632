"""Versioned schema migrations (``sql/migrations/NNN_name[.dialect].sql``) and their runner."""
