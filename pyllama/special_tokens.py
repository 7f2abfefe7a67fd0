"""Cutting the text of special tokens (``<|im_start|>``, ``<s>``, ...) out of a string, as llama.cpp does.

:class:`SpecialSplitter` replaces each occurrence of a special token's text by that token's
id and leaves the text between them as strings; :class:`pyllama.tokenizer.Tokenizer` encodes
the strings. A vocabulary can have thousands of special tokens; one regular expression built
from their character trie finds them all in one scan of the text.
"""
from __future__ import annotations

import re


class SpecialSplitter:
    """Cuts special-token text out of a string exactly as llama.cpp does.

    llama.cpp takes the special tokens one at a time, longest first, and cuts
    every occurrence of each out of the text pieces still left. To do the same
    without trying every token on the text, one scan finds, at every position,
    the longest token starting there; the tokens that occur at all are those
    and their prefixes that are tokens too, and only they are then replayed in
    llama.cpp's order.
    """

    def __init__(self, tokens: dict[str, int]):
        self.ids = tokens
        trie = _trie(tokens)
        self.scan = re.compile("(?=(" + _trie_regex(trie, tokens) + "))", re.DOTALL)
        # the tokens that are prefixes of each token (a walk down the trie: linear in the
        # token's length, so a token of a million characters costs no more than its text)
        self.prefixes = {}
        for t in tokens:
            node, found = trie, []
            for k, ch in enumerate(t[:-1], 1):
                node = node[ch]
                if "" in node:
                    found.append(t[:k])
            self.prefixes[t] = found

    def split(self, s: str) -> list:
        """`s` as a list of str pieces and int token ids."""
        found = set()
        for m in self.scan.finditer(s):
            t = m.group(1)
            if t not in found:
                found.add(t)
                found.update(self.prefixes[t])
        if not found:
            return [s]
        parts: list = [(0, len(s))]
        # llama.cpp sorts by length only; equal lengths keep id order here
        for t in sorted(found, key=lambda t: (-len(t), self.ids[t])):
            tid, n = self.ids[t], len(t)
            new = []
            for p in parts:
                if isinstance(p, int):
                    new.append(p)
                    continue
                start, end = p
                at = s.find(t, start, end)
                if at < 0:
                    new.append(p)
                    continue
                while at >= 0:
                    if at > start:
                        new.append((start, at))
                    new.append(tid)
                    start = at + n
                    at = s.find(t, start, end)
                if start < end:
                    new.append((start, end))
            parts = new
        return [p if isinstance(p, int) else s[p[0]:p[1]] for p in parts]


def _trie(words) -> dict:
    """A character trie of `words`: nested dicts, "" marking the end of a word."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = True
    return trie


_MAX_TRIE_NESTING = 100  # groups nested in the regex; deeper only for contrived vocabularies


class _TooDeep(Exception):
    pass


def _trie_regex(trie: dict, words) -> str:
    """A regex matching the longest of `words` at a position: the trie as nested groups,
    runs of characters without a branch or a word end written as one literal. When the
    nesting gets deep (tokens that are each other's prefixes a hundred times over), an
    alternation of the words, longest first, does the same job more slowly."""

    def build(node, depth: int) -> str:
        if depth > _MAX_TRIE_NESTING:
            raise _TooDeep
        alts = []
        for ch, child in sorted((k, v) for k, v in node.items() if k):
            run = [ch]
            while len(child) == 1 and "" not in child:  # one way on, no word ends here
                (ch2, child), = child.items()
                run.append(ch2)
            alts.append(re.escape("".join(run)) + build(child, depth + 1))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:
            return "(?:" + body + ")?"
        return body

    try:
        return build(trie, 0)
    except _TooDeep:
        return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"
