"""The cloudflared binary: pinned download with SHA-256, versions side by side, and upgrades
rolled through the supervisors with a canary.

May import: ``supervise``, ``alerts``, ``config`` and the foundation modules.
"""
