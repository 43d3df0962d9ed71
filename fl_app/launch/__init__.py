"""Process control: Flower's SuperLink, SuperNodes and CLI, and a local federation.

Tooling for scripts and tests, never imported by the app itself.
"""
