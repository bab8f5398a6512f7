"""Dynamic batching: a queue, a token-budget scheduler and the worker threads that own the device."""

from service.engine.engine import DeadlineExceeded, Engine, EngineStopped, Overloaded

__all__ = ["DeadlineExceeded", "Engine", "EngineStopped", "Overloaded"]
