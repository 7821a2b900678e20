"""The running daemon: wiring, the main loop, reload, token feeds, the control socket, the
HTTP listener (metrics, health, status) and sd_notify.

May import every product package below it (``supervise``, ``alerts``, ``cloudflared``,
``cloudflare``, ``sources``, ``config``); only the commands (``cli``, ``check``, ``demo``) import
it.
"""
