"""The collector's exceptions: one base, subclasses carry what the user needs."""


class CollectorError(Exception):
    """Base of every error raised by the collector package."""
