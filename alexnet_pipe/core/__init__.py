"""The ground floor: one-sentence errors, atomic files, output places, progress, the checked readers of small files."""
