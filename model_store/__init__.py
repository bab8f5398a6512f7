"""The model store that ships inside the package as `service.bundled_store` (setup.py): the demo PRM.

No code: this file only makes the store importable in an editable install as in a wheel.
"""
