"""xaas — explanation-as-a-service for image models."""

__version__ = "0.1.0"
