"""SentencePiece-style BPE: merge the highest-scoring adjacent pair first.

This is the algorithm of sentencepiece's BPE model (and of llama.cpp's
``llm_tokenizer_spm`` and llama2.c's ``encode``), used for GGUF ``llama``
vocabularies and llama2.c ``tokenizer.bin`` files:

1. the text (spaces already replaced by U+2581 "▁") starts as one symbol per
   Unicode character;
2. every adjacent pair whose concatenation is a vocabulary piece is a merge
   candidate, ranked by the piece's score (higher first; on equal scores the
   leftmost pair first);
3. the best candidate is merged, the new neighbours become candidates, and so
   on until no candidate is left;
4. each final symbol is emitted as its piece id, or, when it is not a piece
   (a character missing from the vocabulary), as one byte-fallback piece
   ``<0xXX>`` per UTF-8 byte (or the unknown id when there are none).

Speed: merges never cross a point where the vocabulary has no piece spanning
it, so the text is cut into short segments (before each "▁" that follows a
character no piece puts in front of a "▁"; inside a new segment, between any
two characters that no piece holds side by side), and each distinct segment
is encoded once and cached. English text then costs a dictionary lookup per
word.
"""

from __future__ import annotations

import heapq
import re

SPACE = "\u2581"  # "▁", SentencePiece's visible space

_CACHE_LIMIT = 200_000


class SpmBpe:
    """Encoder for one vocabulary.

    `pieces` maps piece text -> (id, score) for every piece that merges may
    produce; `byte_ids[b]` is the id of the byte piece for byte b (or None);
    `unk_id` is used for bytes without a byte piece.
    """

    def __init__(self, pieces: dict, byte_ids: list, unk_id: int | None):
        self.pieces = pieces
        self.byte_ids = byte_ids
        self.unk_id = unk_id
        self.has_bytes = any(b is not None for b in byte_ids)
        self._cache: dict[str, tuple] = {}
        # characters that some piece puts right before a "▁": we may not cut there
        glued = set()
        for p in pieces:
            i = p.find(SPACE, 1)
            while i > 0:
                if p[i - 1] != SPACE:
                    glued.add(p[i - 1])
                i = p.find(SPACE, i + 1)
        avoid = re.escape(SPACE + "".join(sorted(glued)))
        self._cut = re.compile(f"(?<=[^{avoid}])(?={SPACE})")
        # every two characters that stand side by side in some piece
        self._pairs = {p[i:i + 2] for p in pieces for i in range(len(p) - 1)}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (spaces must already be "▁")."""
        out: list[int] = []
        cache = self._cache
        for seg in self._cut.split(text):
            ids = cache.get(seg)
            if ids is None:
                ids = self._encode_cut(seg)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[seg] = ids
            out.extend(ids)
        return out

    def _encode_cut(self, seg: str) -> tuple:
        """Encode a segment, cut further where two neighbouring characters
        occur together in no piece (as in "word" + ","): no merge spans such
        a point, and the parts are shared between segments through the cache."""
        pairs, cache = self._pairs, self._cache
        parts, start = [], 0
        for i in range(1, len(seg)):
            if seg[i - 1:i + 1] not in pairs:
                parts.append(seg[start:i])
                start = i
        if not parts:
            return self._encode_segment(seg)
        parts.append(seg[start:])
        out = []
        for part in parts:
            ids = cache.get(part)
            if ids is None:
                ids = cache[part] = self._encode_segment(part)
            out.extend(ids)
        return tuple(out)

    def _encode_segment(self, seg: str) -> tuple:
        n = len(seg)
        if n == 0:
            return ()
        pieces = self.pieces
        if n == 1:
            hit = pieces.get(seg)
            return (hit[0],) if hit else self._fallback(seg)
        # symbol i covers seg[i : i + size[i]]; merged-away symbols have size 0
        size = [1] * n
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            hit = pieces.get(seg[i:i + 2])
            if hit is not None:
                heap.append((-hit[1], i, i + 1, 2))
        heapq.heapify(heap)
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            _, left, right, total = pop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue  # stale: one side was merged into something else meanwhile
            size[left] = total
            size[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                t = size[before] + total
                hit = pieces.get(seg[before:before + t])
                if hit is not None:
                    push(heap, (-hit[1], before, left, t))
            if after >= 0:
                t = total + size[after]
                hit = pieces.get(seg[left:left + t])
                if hit is not None:
                    push(heap, (-hit[1], left, after, t))
        out = []
        i = 0
        while i >= 0:
            sym = seg[i:i + size[i]]
            hit = pieces.get(sym)
            if hit is not None:
                out.append(hit[0])
            else:
                out.extend(self._fallback(sym))
            i = nxt[i]
        return tuple(out)

    def _fallback(self, sym: str) -> tuple:
        if not self.has_bytes:  # no byte pieces: one unknown token per symbol
            return () if self.unk_id is None else (self.unk_id,)
        out = []
        for b in sym.encode("utf-8", "surrogatepass"):
            tid = self.byte_ids[b]
            if tid is None:
                tid = self.unk_id
            if tid is not None:
                out.append(tid)
        return tuple(out)
