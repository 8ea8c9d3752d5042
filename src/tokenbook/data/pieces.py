"""Text budgets in UTF-8 bytes: the first N bytes of a corpus, and text cut into pieces of whole lines."""
from __future__ import annotations

from typing import Sequence


def take_bytes(texts: Sequence[str], max_bytes: int | None) -> list[str]:
    """The first `max_bytes` UTF-8 bytes of `texts`, in order (the last text cut at a character
    boundary); all of them when `max_bytes` is None."""
    if max_bytes is None:
        return list(texts)
    out, total = [], 0
    for t in texts:
        if total >= max_bytes:
            break
        data = t.encode("utf-8")[: max_bytes - total]
        out.append(data.decode("utf-8", errors="ignore"))
        total += len(data)
    return out


def cut(text: str, max_bytes: int) -> list[str]:
    """`text` cut after line ends into pieces of at most `max_bytes` UTF-8 bytes (a longer line is cut at
    a character boundary). Joined, the pieces give back `text`."""
    pieces, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        while n > max_bytes:  # an overlong line: cut it by characters
            head = line.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
            if cur:
                pieces.append("".join(cur))
                cur, size = [], 0
            pieces.append(head)
            line = line[len(head):]
            n = len(line.encode("utf-8"))
        if size + n > max_bytes and cur:
            pieces.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += n
    if cur:
        pieces.append("".join(cur))
    return pieces
