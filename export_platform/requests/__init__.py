"""The request table: the application's interface (schema, statements) and the Python client on it."""
