"""dsmon: measures LLM inference processes and the host they run on."""

__version__ = "0.1.0"
