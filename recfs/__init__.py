"""recfs: a Yeastar S-Series PBX's call recordings as a read-only filesystem."""

__version__ = "0.1.0"
