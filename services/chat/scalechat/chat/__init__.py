"""The chat server: protocol, hub, broker, node and the aiohttp transport."""
