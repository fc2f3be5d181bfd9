"""hookscope queries: audit trail and drain root-cause analysis over the store."""


class QueryError(Exception):
    """Base of every error raised by the queries package."""
