"""The request table: the application's interface (statuses, schema, statements) and the Python client on it."""
