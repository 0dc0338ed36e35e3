"""Planning: from a request or job config to a checked plan and the SQL that reads it."""
