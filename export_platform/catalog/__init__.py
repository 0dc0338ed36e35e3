"""The export catalog: what can be exported (the type model, the declared types) and in which formats."""
