"""Packaging beyond what pyproject.toml can say: the bundled demo store ships inside the wheel.

`model_store/` (store.json and the demo PRM) becomes the data-only package `service.bundled_store`, so
`pip install .` from a clone serves the demo from any directory (service.store.bundled_store finds it).
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["service*"]), "service.bundled_store"],
    package_dir={"service.bundled_store": "model_store"},
    package_data={"service.bundled_store": ["store.json", "demo-arith/*/*"]},
    exclude_package_data={"service.bundled_store": ["README.md"]},
)
