"""Cloudflare's tunnel API: the client, its request budget, the fleet poller, and the tunnel
secret refresh (on demand and on a schedule).

May import: ``alerts``, ``sources``, ``config`` and the foundation modules; not ``cloudflared``.
"""
