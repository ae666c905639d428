"""xaas — explanation-as-a-service for image models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xaas")
except PackageNotFoundError:  # a source tree that was never installed (pip install -e . fixes it)
    __version__ = "0+unknown"
