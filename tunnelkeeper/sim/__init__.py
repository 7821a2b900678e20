"""A faithful local stand-in for cloudflared and Cloudflare's edge and API."""
