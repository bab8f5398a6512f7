"""Dynamic batching: a queue, a token-budget scheduler and one worker thread that owns the device."""

from service.engine.engine import DeadlineExceeded, Engine, EngineStopped, Overloaded

__all__ = ["DeadlineExceeded", "Engine", "EngineStopped", "Overloaded"]
