"""Class names short enough for a picture's title, cut only between words."""
from __future__ import annotations


def short_title(name: str, width: int = 18) -> str:
    """ImageNet names list synonyms ("tench, Tinca tinca"): the first one, and of that the leading whole words that
    fit in `width` characters, with "…" where words were left out. A first word longer than `width` stays whole."""
    first = name.split(",")[0].strip() or name.strip()
    words = first.split()
    if not words:
        return name.strip()
    kept = [words[0]]
    for word in words[1:]:
        if len(" ".join([*kept, word])) > width:
            return " ".join(kept) + "…"
        kept.append(word)
    return " ".join(kept)
