"""Minimal WAV reader and writer (no torchcodec / soundfile needed).

``torchaudio.load`` in torchaudio >= 2.9 needs torchcodec, and the standard ``wave`` module reads
integer PCM only, so RIFF chunks are parsed here directly: integer PCM of 8 (unsigned), 16, 24 and
32 bits and IEEE float of 32 and 64 bits, plain or WAVE_FORMAT_EXTENSIBLE. Format reference:
https://www.mmsp.ece.mcgill.ca/Documents/AudioFormats/WAVE/WAVE.html
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np
import torch

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
FORMAT_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM",
                0x0055: "MP3"}
ENCODINGS = {"pcm8": (PCM, 8), "pcm16": (PCM, 16), "pcm24": (PCM, 24), "pcm32": (PCM, 32),
             "float32": (IEEE_FLOAT, 32), "float64": (IEEE_FLOAT, 64)}
UNKNOWN_SIZE = 0xFFFFFFFF      # data size written by streaming encoders: "up to the end of file"
PathLike = Union[str, os.PathLike]


@dataclass
class WavInfo:
    """Header facts of a WAV file; the samples are ``data_size`` bytes at ``data_offset``."""
    encoding: str
    channels: int
    sample_rate: int
    num_frames: int
    data_offset: int
    data_size: int


def _parse_fmt(path: PathLike, body: bytes) -> Tuple[str, int, int, int]:
    """``(encoding, channels, sample_rate, block_align)`` of a 'fmt ' chunk body."""
    if len(body) < 16:
        raise ValueError(f"{path}: truncated WAV header: 'fmt ' chunk has {len(body)} bytes, needs 16")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == EXTENSIBLE:
        if len(body) < 40:
            raise ValueError(f"{path}: truncated WAV header: extensible 'fmt ' chunk has {len(body)} "
                             f"bytes, needs 40")
        tag = struct.unpack("<H", body[24:26])[0]       # first 2 bytes of the sub-format GUID
    encoding = {v: k for k, v in ENCODINGS.items()}.get((tag, bits))
    if encoding is None:
        kind = {PCM: "integer PCM", IEEE_FLOAT: "IEEE float"}.get(tag, FORMAT_NAMES.get(tag, "format"))
        raise ValueError(f"{path}: unsupported WAV encoding: {kind} (tag 0x{tag:04X}) with {bits} bits; "
                         f"supported: {sorted(ENCODINGS)}")
    if channels < 1 or rate < 1 or block_align != channels * bits // 8:
        raise ValueError(f"{path}: corrupt WAV header: channels={channels}, sample_rate={rate}, "
                         f"block_align={block_align} (expected {channels * bits // 8})")
    return encoding, channels, rate, block_align


def wav_info(path: PathLike) -> WavInfo:
    """Parse the RIFF header of a WAV file without reading its samples.

    Raises:
        ValueError: not RIFF/WAVE, truncated header or data, missing 'fmt ' or 'data' chunk,
            unsupported encoding, or no samples. The message names the file.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise ValueError(f"{path}: truncated WAV header: {len(head)} bytes, a RIFF header has 12")
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF/WAVE file (starts with {head[:4]!r}...{head[8:12]!r})")
        fmt = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                missing = "'fmt '" if fmt is None else "'data'"
                raise ValueError(f"{path}: truncated WAV header: no {missing} chunk before the end of file")
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                body = f.read(size)
                if len(body) < size:
                    raise ValueError(f"{path}: truncated WAV header: 'fmt ' chunk declares {size} bytes, "
                                     f"the file holds {len(body)}")
                fmt = _parse_fmt(path, body)
                f.seek(size & 1, os.SEEK_CUR)           # chunks are padded to even sizes
            elif cid == b"data":
                if fmt is None:
                    raise ValueError(f"{path}: corrupt WAV file: 'data' chunk before 'fmt '")
                offset = f.tell()
                available = file_size - offset
                if size == UNKNOWN_SIZE or (size == 0 and available > 0):
                    size = available
                elif size > available:
                    raise ValueError(f"{path}: truncated WAV data: 'data' chunk declares {size} bytes, "
                                     f"the file holds {available}")
                encoding, channels, rate, block_align = fmt
                frames = size // block_align
                if frames == 0:
                    raise ValueError(f"{path}: WAV file has 0 samples")
                return WavInfo(encoding, channels, rate, frames, offset, frames * block_align)
            else:
                f.seek(size + (size & 1), os.SEEK_CUR)


def read_wav(path: PathLike) -> Tuple[torch.Tensor, int]:
    """Read a WAV file as float32 in [-1, 1].

    Returns:
        ``(waveform [channels, samples], sample_rate)``.
    Raises:
        ValueError: see ``wav_info``.
    """
    info = wav_info(path)
    with open(path, "rb") as f:
        f.seek(info.data_offset)
        raw = np.frombuffer(f.read(info.data_size), dtype=np.uint8)
    tag, bits = ENCODINGS[info.encoding]
    if tag == IEEE_FLOAT:
        x = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif bits == 8:
        x = (raw.astype(np.float32) - 128.0) / 128.0                         # 8-bit PCM is unsigned
    elif bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8) / 2.0 ** 23   # sign-extend
    else:
        x = raw.view("<i2" if bits == 16 else "<i4") / 2.0 ** (bits - 1)
    wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return wave.reshape(info.num_frames, info.channels).T.contiguous(), info.sample_rate


def write_wav(path: PathLike, waveform: torch.Tensor, sample_rate: int, encoding: str = "pcm16",
              extensible: bool = False) -> None:
    """Write ``waveform`` ([samples] or [channels, samples], values in [-1, 1]) as a WAV file.

    Args:
        encoding: one of 'pcm8', 'pcm16', 'pcm24', 'pcm32', 'float32', 'float64'.
        extensible: write a WAVE_FORMAT_EXTENSIBLE header instead of the plain one.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {sorted(ENCODINGS)}, got {encoding!r}")
    wave = waveform.detach().double().cpu()
    wave = wave[None] if wave.dim() == 1 else wave
    if wave.dim() != 2:
        raise ValueError(f"waveform: expected [samples] or [channels, samples], got {tuple(waveform.shape)}")
    tag, bits = ENCODINGS[encoding]
    x = wave.T.numpy()                                                       # [samples, channels]
    if tag == IEEE_FLOAT:
        data = x.astype("<f4" if bits == 32 else "<f8").tobytes()
    else:
        scale = 2.0 ** (bits - 1)
        q = np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int64)
        if bits == 8:
            data = (q + 128).astype(np.uint8).tobytes()
        elif bits == 24:
            data = (q.astype("<i4").reshape(-1, 1).view(np.uint8)[:, :3]).tobytes()
        else:
            data = q.astype("<i2" if bits == 16 else "<i4").tobytes()
    channels = wave.shape[0]
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", EXTENSIBLE if extensible else tag, channels, sample_rate,
                      sample_rate * block_align, block_align, bits)
    if extensible:   # cbSize, valid bits, channel mask, sub-format GUID (tag + the fixed suffix)
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + \
            bytes.fromhex("000000001000800000aa00389b71")
    chunks = [(b"fmt ", fmt)]
    if tag != PCM:   # non-PCM files carry a 'fact' chunk with the frame count
        chunks.append((b"fact", struct.pack("<I", wave.shape[1])))
    chunks.append((b"data", data))
    body = b"".join(cid + struct.pack("<I", len(b)) + b + b"\0" * (len(b) & 1) for cid, b in chunks)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
