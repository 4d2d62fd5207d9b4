"""Log stage: the classification log auditors query (SQLAlchemy; SQLite by default)."""
