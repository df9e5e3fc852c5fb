"""The pure core: the envelope, topics, frames, the codec, configuration and errors.

No I/O and no event loop here (checked by import-linter).
"""
