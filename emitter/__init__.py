"""hookscope node side: the hook runner, its journal, and the agent that ships it."""

__version__ = "0.1.0"


class EmitterError(Exception):
    """Base of every error raised by the emitter package."""
