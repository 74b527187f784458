"""Random edits of a text, for the tests that compare our recognizers with an independent library."""


def mutate(rng, text, alphabet, edits=(1, 2)):
    """text with rng.randint(*edits) random edits, each an insertion, deletion or replacement of a
    character drawn from alphabet."""
    chars = list(text)
    for _ in range(rng.randint(*edits)):
        op = rng.random()
        pos = rng.randint(0, len(chars))
        if op < 0.4:
            chars.insert(pos, rng.choice(alphabet))
        elif chars and op < 0.7:
            del chars[min(pos, len(chars) - 1)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(alphabet)
    return "".join(chars)
