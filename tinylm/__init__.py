"""tinylm: small GPT-style language models whose weight sharing is done right."""

__version__ = "0.1.0"
