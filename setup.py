"""Build script: the package metadata is in pyproject.toml; this file adds the compiled parts."""
from setuptools import setup

setup()
