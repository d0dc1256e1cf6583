"""Every encoding of the shard format, defined once: frames and infrared as JPEG, depth as 16-bit PNG in
millimetres, audio as FLAC.

The pipeline's stages encode with these (probe, clip, depth, infrared) and everything that reads a
shard or a manifest decodes with them (the trainer's preprocessing, the report, the model stages that
read frames), so writer and reader cannot drift apart. Heavy libraries (Pillow, PyAV) are imported
on first use: the contracts floor stays cheap to import.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from contracts.shard_format import DEPTH_MAX_MM

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_QUALITY = 90


# -- frames and infrared: JPEG --------------------------------------------------------------------
def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A JPEG of a (H, W, 3) RGB or (H, W) single-channel uint8 array (infrared frames are the latter)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, mode: str | None = "RGB"):
    """Encoded image bytes (JPEG, PNG, WebP, ...) as a loaded PIL image, converted to ``mode`` if given.

    Raises ``ValueError`` in words when the bytes are empty or not an image, so a caller can turn it
    into a row's ``error``.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError("empty frame")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError(f"not a decodable image ({len(data)} bytes starting {data[:8]!r})") from None
    return image.convert(mode) if mode and image.mode != mode else image


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image bytes as a (H, W, 3) uint8 RGB array (grayscale replicated, alpha dropped)."""
    return np.asarray(decode_image(data, "RGB"))


# -- depth: 16-bit PNG, millimetres ---------------------------------------------------------------
def encode_depth_png(mm: np.ndarray, level: int = 1) -> bytes:
    """A 16-bit grayscale PNG of a (H, W) uint16 array of millimetres (clipped at ``DEPTH_MAX_MM`` by the caller).

    Written here rather than through Pillow: each scanline gets the PNG "Up" filter (a difference to
    the row above, which makes smooth depth compress well) computed with numpy, and zlib runs
    without the GIL; about twice as fast as Pillow and smaller on depth maps.
    """
    h, w = mm.shape
    rows = np.ascontiguousarray(mm, dtype=">u2").view(np.uint8).reshape(h, 2 * w)
    filtered = np.empty((h, 2 * w + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "Up"
    filtered[:, 1:] = rows
    filtered[1:, 1:] -= rows[:-1]  # wraps modulo 256, as the PNG filter is defined

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)  # 16-bit, grayscale, deflate, no interlace
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(filtered.tobytes(), level))
        + chunk(b"IEND", b"")
    )


def decode_depth_png(data: bytes) -> np.ndarray:
    """A depth PNG as a (H, W) uint16 array of millimetres (at most ``DEPTH_MAX_MM``)."""
    mm = np.asarray(decode_image(data, mode=None))
    if mm.dtype != np.uint16:  # Pillow opens 16-bit grayscale as mode "I;16" (uint16) or "I" (int32)
        mm = mm.astype(np.int64).clip(0, DEPTH_MAX_MM).astype(np.uint16)
    return mm


# -- audio: FLAC ----------------------------------------------------------------------------------
def encode_flac(samples: np.ndarray, rate: int) -> bytes:
    """Mono int16 samples -> FLAC bytes (lossless, in memory).

    FFmpeg's encoder at its default level 5, with 4096-sample blocks (libFLAC's default; FFmpeg picks
    by duration, 1152 at 16 kHz) and no padding block (the muxer's default reserves 8 KiB for tags
    written later): the same samples, 10 s at 16 kHz encoded in 1.9 instead of 2.5 ms and 3-26% smaller.
    Levels 0-2 are slower here (more bits to write), level 8 twice as slow.
    """
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac", options={"metadata_header_padding": "0"}) as out:
        st = out.add_stream("flac", rate=rate, layout="mono", options={"frame_size": "4096"})
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for p in st.encode(frame):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC bytes -> (mono float32 samples in [-1, 1], sample rate)."""
    import av

    with av.open(io.BytesIO(data)) as c:
        st = c.streams.audio[0]
        chunks = [
            f.to_ndarray().reshape(f.layout.nb_channels if hasattr(f.layout, "nb_channels") else 1, -1)[0]
            for f in c.decode(st)
        ]
        rate = st.codec_context.sample_rate
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return (pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)), rate
