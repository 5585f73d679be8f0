"""The installed scalechat version (``[project] version`` of the root pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scalechat")
except PackageNotFoundError:  # run from a checkout without installing it
    __version__ = "0+unknown"
