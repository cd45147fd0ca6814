"""A bar chart as a PNG, with the standard library only (zlib + struct), so the report needs no
plotting package: an RGB canvas, filled rectangles, and a 5×7 bitmap font for labels."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

RGB = tuple[int, int, int]

# 5x7 glyphs, one int per row, bit 4 = leftmost pixel.
_FONT: dict[str, tuple[int, ...]] = {
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (30, 17, 17, 17, 17, 17, 30),
    "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31), "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14), "9": (14, 17, 17, 15, 1, 2, 12),
    ".": (0, 0, 0, 0, 0, 12, 12), "-": (0, 0, 0, 31, 0, 0, 0), ",": (0, 0, 0, 0, 12, 4, 8),
    "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8), "/": (0, 1, 2, 4, 8, 16, 0),
    ":": (0, 12, 12, 0, 12, 12, 0), "%": (24, 25, 2, 4, 8, 19, 3),
    "+": (0, 4, 4, 31, 4, 4, 0), "=": (0, 0, 31, 0, 31, 0, 0), ">": (8, 4, 2, 1, 2, 4, 8),
    "<": (2, 4, 8, 16, 8, 4, 2), " ": (0, 0, 0, 0, 0, 0, 0),
}


class Canvas:
    def __init__(self, width: int, height: int, background: RGB = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x: int, y: int, w: int, h: int, color: RGB) -> None:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(color) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start:start + len(row)] = row

    def text(self, x: int, y: int, s: str, color: RGB = (0, 0, 0), scale: int = 2) -> int:
        """Draw ``s`` (upper-cased; unknown characters as blanks); return the x after it."""
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col in range(5):
                    if bits & (16 >> col):
                        self.rect(x + col * scale, y + row * scale, scale, scale, color)
            x += 6 * scale
        return x

    @staticmethod
    def text_width(s: str, scale: int = 2) -> int:
        return len(s) * 6 * scale

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        stride = self.width * 3
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride])
                       for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


PALETTE: dict[str, RGB] = {
    "floor": (150, 150, 150), "direct": (150, 150, 150), "ours": (31, 119, 180),
    "notebook": (108, 170, 220), "eg": (214, 39, 40),
}


def bar_chart(path: Path, panels: Sequence[tuple[str, Sequence[tuple[str, float, str]]]],
              width: int = 980) -> Path:
    """Horizontal bars: ``panels`` = [(title, [(label, value, palette key), ...]), ...].

    Each panel has its own linear scale starting at 0; the value is printed after each bar.
    """
    label_w = 30 * 12
    bar_h, gap, title_h, pad = 22, 8, 34, 18
    height = pad + sum(title_h + len(rows) * (bar_h + gap) + pad for _, rows in panels) + 24
    c = Canvas(width, height)
    y = pad
    for title, rows in panels:
        c.text(pad, y, title, (0, 0, 0))
        y += title_h
        finite = [v for _, v, _ in rows if v == v and v > 0]
        top = max(finite) if finite else 1.0
        span = width - label_w - pad - 150
        for label, value, key in rows:
            c.text(pad, y + 4, label[:30], (40, 40, 40))
            ok = value == value and value > 0
            w = max(2, int(span * value / top)) if ok else 0
            c.rect(label_w, y, w, bar_h, PALETTE.get(key, (100, 100, 100)))
            c.text(label_w + w + 8, y + 4, f"{value:.1f}" if ok else "N/A", (0, 0, 0))
            y += bar_h + gap
        c.rect(label_w - 1, y - len(rows) * (bar_h + gap), 1, len(rows) * (bar_h + gap),
               (0, 0, 0))
        y += pad
    c.text(pad, height - 22, "MEDIANS IN MS, SAME RUN, SAME MACHINE. LOWER IS BETTER.",
           (90, 90, 90))
    path.write_bytes(c.png())
    return path
