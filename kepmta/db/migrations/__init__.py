"""Alembic's script folder of kepmta's schema (kepmta.db.migrate runs it; `kepmta db upgrade`)."""
