"""Dynamic batching: a queue, a token-budget scheduler and one worker thread that owns the device."""

from service.engine.engine import Engine, EngineStopped, Overloaded

__all__ = ["Engine", "EngineStopped", "Overloaded"]
