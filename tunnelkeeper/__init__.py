"""tunnelkeeper: keeps cloudflared replicas ready at the edge."""

__version__ = "0.1.0"
