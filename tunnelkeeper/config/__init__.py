"""Configuration: the TOML file, its checked model, and the wording of every config error.

Owns ``model`` (the frozen dataclasses the rest of the daemon reads), ``load`` (file → model,
with every problem naming its key and line) and the per-section parsers behind it.
May import: the foundation modules only (``errors``, ``tunneltoken``, ``alertcatalog``).
"""
