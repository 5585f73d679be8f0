"""scalechat: a WebSocket chat server built to be scaled."""
__version__ = "0.1.0"
