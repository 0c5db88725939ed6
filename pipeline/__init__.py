"""JSON hot-folder pipeline: small programs that talk only through one SQLite job table."""

__version__ = "0.1.0"
