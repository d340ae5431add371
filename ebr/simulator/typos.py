"""Misspellings: real ones from a list, phonetic rewrite rules, and keyboard edits whose statistics were
measured on the Birkbeck corpus (ebr/simulator/assets/typo_stats.json, by
`python -m ebr.simulator.derive_assets`).

`edit_statistics` is the one measurement used both to derive the shipped statistics from the real corpus and
to check that generated misspellings reproduce them.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOWELS = frozenset("aeiou")
OPS = ("substitution", "insertion", "deletion", "transposition")
POSITION_BINS = 5
MAX_EDITS = 3
MIN_GAP = 1  # edits of one word are at least this far apart, so that they stay separate edits
_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")

# Sound-alike rewrites (pattern in the correct word -> what is typed), tried at one occurrence.
PHONETIC_RULES: tuple[tuple[str, str], ...] = (
    ("ph", "f"),
    ("f", "ph"),
    ("ck", "k"),
    ("c", "k"),
    ("k", "c"),
    ("c", "s"),
    ("s", "c"),
    ("s", "z"),
    ("z", "s"),
    ("ie", "ei"),
    ("ei", "ie"),
    ("y", "i"),
    ("i", "y"),
    ("ai", "ay"),
    ("ay", "ai"),
    ("ee", "ea"),
    ("ea", "ee"),
    ("oo", "u"),
    ("ou", "ow"),
    ("ow", "ou"),
    ("tion", "sion"),
    ("sion", "tion"),
    ("ence", "ance"),
    ("ance", "ence"),
    ("er", "or"),
    ("or", "er"),
    ("ar", "er"),
    ("er", "ar"),
    ("able", "ible"),
    ("ible", "able"),
    ("gh", ""),
    ("wh", "w"),
    ("kn", "n"),
    ("mb", "m"),
    ("x", "ks"),
    ("qu", "kw"),
    ("son", "sen"),
    ("sen", "son"),
)


def _keyboard_neighbours() -> dict[str, str]:
    """QWERTY neighbours: left/right on the row, and the two touching keys on the rows above and below."""
    where = {ch: (r, c) for r, row in enumerate(_QWERTY_ROWS) for c, ch in enumerate(row)}
    out: dict[str, str] = {}
    for ch, (r, c) in where.items():
        near = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
        out[ch] = "".join(
            _QWERTY_ROWS[rr][cc]
            for rr, cc in near
            if 0 <= rr < len(_QWERTY_ROWS) and 0 <= cc < len(_QWERTY_ROWS[rr])
        )
    return out


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()


def edit_ops(correct: str, typed: str) -> list[tuple[str, int]]:
    """A minimal Damerau (optimal string alignment) edit script turning `correct` into `typed`.

    Each edit is (operation, position in `correct`); an insertion's position is the index it precedes.
    """
    n, m = len(correct), len(typed)
    d = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        d[i][0] = i
    for j in range(m + 1):
        d[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost = correct[i - 1] != typed[j - 1]
            best = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and correct[i - 1] == typed[j - 2] and correct[i - 2] == typed[j - 1]:
                best = min(best, d[i - 2][j - 2] + 1)
            d[i][j] = best
    ops: list[tuple[str, int]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and correct[i - 1] == typed[j - 1] and d[i][j] == d[i - 1][j - 1]:
            i, j = i - 1, j - 1
        elif i > 0 and j > 0 and d[i][j] == d[i - 1][j - 1] + 1:
            ops.append(("substitution", i - 1))
            i, j = i - 1, j - 1
        elif (
            i > 1
            and j > 1
            and correct[i - 1] == typed[j - 2]
            and correct[i - 2] == typed[j - 1]
            and d[i][j] == d[i - 2][j - 2] + 1
        ):
            ops.append(("transposition", i - 2))
            i, j = i - 2, j - 2
        elif i > 0 and d[i][j] == d[i - 1][j] + 1:
            ops.append(("deletion", i - 1))
            i -= 1
        else:
            ops.append(("insertion", i))
            j -= 1
    return ops[::-1]


def phonetic_rule(correct: str, typed: str) -> str | None:
    """The phonetic rule ('ph>f') that turns `correct` into `typed` by one rewrite, if any."""
    for src, dst in PHONETIC_RULES:
        if len(correct) - len(src) + len(dst) != len(typed):
            continue
        start = correct.find(src)
        while start >= 0:
            if correct[:start] + dst + correct[start + len(src) :] == typed:
                return f"{src}>{dst}"
            start = correct.find(src, start + 1)
    return None


LENGTH_BUCKETS = ("1-4", "5-6", "7-8", "9+")


def length_bucket(word: str) -> str:
    """The word-length bucket the edit-count statistics are conditioned on."""
    n = len(word)
    return "1-4" if n <= 4 else "5-6" if n <= 6 else "7-8" if n <= 8 else "9+"


def _has_double(word: str) -> bool:
    return any(a == b for a, b in zip(word, word[1:], strict=False))


def _shares(counter: Counter, keys: Iterable[str]) -> dict[str, float]:
    total = sum(counter[k] for k in keys) or 1
    return {k: round(counter[k] / total, 4) for k in keys}


def edit_statistics(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Edit statistics of (correct, misspelled) lower-case letter pairs at edit distance 1..MAX_EDITS.

    Phonetic rewrites are counted first; the keyboard-edit statistics are measured on the other pairs.
    """
    n_pairs = too_far = phonetic = 0
    rules: Counter = Counter()
    distance: Counter = Counter()
    by_length: dict[str, Counter] = {b: Counter() for b in LENGTH_BUCKETS}
    ops: Counter = Counter()
    bins: Counter = Counter()
    sub: dict[str, Counter] = {"vowel": Counter(), "consonant": Counter()}
    ins: Counter = Counter()
    dele: Counter = Counter()
    for correct, typed in pairs:
        if correct == typed or not correct.isalpha() or not typed.isalpha():
            continue
        script = edit_ops(correct, typed)
        if len(script) > MAX_EDITS:
            too_far += 1
            continue
        n_pairs += 1
        rule = phonetic_rule(correct, typed)
        if rule is not None:
            phonetic += 1
            rules[rule] += 1
            continue
        distance[str(len(script))] += 1
        by_length[length_bucket(correct)][str(len(script))] += 1
        for op, pos in script:
            ops[op] += 1
            bins[min(POSITION_BINS - 1, pos * POSITION_BINS // len(correct))] += 1
            if op == "substitution":
                ch, new = correct[pos], _typed_char(correct, typed, script, pos)
                kind = "vowel" if ch in VOWELS else "consonant"
                if new in KEYBOARD_NEIGHBOURS.get(ch, ""):
                    sub[kind]["adjacent"] += 1
                elif kind == "vowel" and new in VOWELS:
                    sub[kind]["vowel"] += 1
                else:
                    sub[kind]["other"] += 1
            elif op == "insertion":
                new = _typed_char(correct, typed, script, pos, inserted=True)
                near = correct[max(0, pos - 1) : pos + 1]
                ins["doubles_neighbour" if new in near else "other"] += 1
            elif op == "deletion" and _has_double(correct):
                doubled = (pos > 0 and correct[pos - 1] == correct[pos]) or (
                    pos + 1 < len(correct) and correct[pos + 1] == correct[pos]
                )
                dele["of_doubled_letter" if doubled else "other"] += 1
    total_bins = sum(bins.values()) or 1
    counts = [str(k) for k in range(1, MAX_EDITS + 1)]
    return {
        "pairs": n_pairs,
        "pairs_beyond_max_edits": too_far,
        "phonetic_share": round(phonetic / max(n_pairs, 1), 4),
        "phonetic_rules": {k: round(v / max(phonetic, 1), 4) for k, v in sorted(rules.items())},
        "edit_count": _shares(distance, counts),
        "edit_count_by_length": {b: _shares(by_length[b], counts) for b in LENGTH_BUCKETS},
        "length_share": {
            b: round(sum(by_length[b].values()) / max(sum(distance.values()), 1), 4) for b in LENGTH_BUCKETS
        },
        "op_share": _shares(ops, OPS),
        "position_bins": [round(bins[b] / total_bins, 4) for b in range(POSITION_BINS)],
        "substitution": {
            "vowel": _shares(sub["vowel"], ("adjacent", "vowel", "other")),
            "consonant": _shares(sub["consonant"], ("adjacent", "other")),
        },
        "insertion_doubles_neighbour": _shares(ins, ("doubles_neighbour", "other"))["doubles_neighbour"],
        "deletion_of_doubled_letter": _shares(dele, ("of_doubled_letter", "other"))["of_doubled_letter"],
    }


def _typed_char(
    correct: str, typed: str, script: list[tuple[str, int]], pos: int, inserted: bool = False
) -> str:
    """The character typed for the edit at `pos` of `correct` (replayed through the edit script)."""
    j = 0
    i = 0
    for op, p in script:
        j += p - i
        i = p
        if p == pos and (op == "insertion") == inserted:
            return typed[j] if j < len(typed) else ""
        if op == "substitution":
            i, j = i + 1, j + 1
        elif op == "deletion":
            i += 1
        elif op == "insertion":
            j += 1
        else:
            i, j = i + 2, j + 2
    return ""


@dataclass(frozen=True)
class TypoModel:
    """Misspells a word: a listed real misspelling if any, else a phonetic rule, else keyboard edits."""

    real: Mapping[str, tuple[str, ...]]  # correct word (lower case) -> its real misspellings
    stats: Mapping[str, Any]  # edit_statistics() of the real corpus
    p_real: float  # chance to use a listed real misspelling when the word has one

    def misspell(self, word: str, rnd: random.Random) -> tuple[str, str]:
        """(misspelled word, source) with source one of real, phonetic, edit; the word itself if too short."""
        listed = self.real.get(word)
        if listed and rnd.random() < self.p_real:
            return rnd.choice(listed), "real"
        if rnd.random() < self.stats["phonetic_share"]:
            typed = self._phonetic(word, rnd)
            if typed is not None:
                return typed, "phonetic"
        for _ in range(4):
            typed = self.keyboard_edits(word, rnd)
            if typed != word and typed:
                return typed, "edit"
        return word, "none"

    def _phonetic(self, word: str, rnd: random.Random) -> str | None:
        rules = self.stats["phonetic_rules"]
        usable = [(rule, w) for rule, w in rules.items() if rule.split(">")[0] in word]
        if not usable:
            return None
        (rule,) = rnd.choices([r for r, _ in usable], weights=[w for _, w in usable])
        src, dst = rule.split(">")
        starts = [i for i in range(len(word)) if word.startswith(src, i)]
        at = rnd.choice(starts)
        return word[:at] + dst + word[at + len(src) :]

    def keyboard_edits(self, word: str, rnd: random.Random) -> str:
        """`word` with 1..MAX_EDITS edits drawn from the measured edit-count (given the word's length),
        edit-type, position and character statistics; edits are at distinct places, applied right to left."""
        s = self.stats
        table = s["edit_count_by_length"][length_bucket(word)]
        (count,) = rnd.choices(list(table), weights=list(table.values()))
        edits: list[tuple[int, str]] = []
        for _ in range(20 * int(count)):
            if len(edits) == int(count):
                break
            (op,) = rnd.choices(OPS, weights=[s["op_share"][o] for o in OPS])
            pos = self._position(word, op, rnd)
            if pos is not None and all(abs(pos - p) >= MIN_GAP for p, _ in edits):
                edits.append((pos, op))
        for pos, op in sorted(edits, reverse=True):
            word = self._apply(word, op, pos, rnd)
        return word

    def _position(self, word: str, op: str, rnd: random.Random) -> int | None:
        """A position for `op` in `word`, reproducing the measured position bins (and, for deletions, the
        measured preference for one letter of a double)."""
        n = len(word)
        doubles = [i for i in range(1, n) if word[i] == word[i - 1]]
        if op == "deletion" and doubles and rnd.random() < self.stats["deletion_of_doubled_letter"]:
            return rnd.choice(doubles)
        last = {"insertion": n, "transposition": n - 2}.get(op, n - 1)
        if last < 0:
            return None
        positions = range(last + 1)
        bin_of = [min(POSITION_BINS - 1, p * POSITION_BINS // n) for p in positions]
        per_bin = Counter(bin_of)
        weights = [self.stats["position_bins"][b] / per_bin[b] for b in bin_of]
        return rnd.choices(positions, weights=weights)[0]

    def _apply(self, word: str, op: str, pos: int, rnd: random.Random) -> str:
        s = self.stats
        if op == "substitution":
            ch = word[pos]
            kind = "vowel" if ch in VOWELS else "consonant"
            table = s["substitution"][kind]
            (how,) = rnd.choices(list(table), weights=list(table.values()))
            near = KEYBOARD_NEIGHBOURS.get(ch, "")
            not_near = [c for c in LETTERS if c != ch and c not in near]
            if how == "adjacent" and near:
                new = rnd.choice(near)
            elif how == "vowel":
                new = rnd.choice([c for c in not_near if c in VOWELS])
            else:
                new = rnd.choice([c for c in not_near if kind == "consonant" or c not in VOWELS])
            return word[:pos] + new + word[pos + 1 :]
        if op == "insertion":
            if rnd.random() < s["insertion_doubles_neighbour"]:
                new = word[min(pos, len(word) - 1)]
            else:
                new = rnd.choice([c for c in LETTERS if c not in word[max(0, pos - 1) : pos + 1]])
            return word[:pos] + new + word[pos:]
        if op == "deletion":
            return word[:pos] + word[pos + 1 :]
        pos = min(pos, len(word) - 2)
        return word[:pos] + word[pos + 1] + word[pos] + word[pos + 2 :]
