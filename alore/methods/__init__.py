"""One module per method; importing this package registers them all in :data:`METHODS`."""

from . import adapter, adaptformer, alore, bitfit, full, linear, lora, repadapter, ssf, vpt  # noqa: F401
from .base import METHODS, Method, MethodConfig, Wrapper, get_method

__all__ = ["METHODS", "Method", "MethodConfig", "Wrapper", "get_method"]
