"""The chat server: protocol, hub, broker, node and the aiohttp transport."""

import os

if os.environ.get("SCALECHAT_PURE_PYTHON") == "1":  # the compiled modules' sources instead
    from scalechat.chat import native

    native.prefer_source()
