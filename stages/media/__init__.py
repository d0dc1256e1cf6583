"""Decoding media: the planned decode of frames and audio (probe, clip), scene cuts and motion (clip)."""
