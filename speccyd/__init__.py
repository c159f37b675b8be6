"""speccyd: a self-hosted text-to-speech server for the Speccy apps."""

__version__ = "0.1.0"
