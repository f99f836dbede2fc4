"""The expected engram table rows of one position, in Python integers written from the definition (independent of
ops/engram/reference.py): shared by test_engram_hash.py and test_golden_v41.py."""


def hand_rows(c, p, primes, mult, pad):
    """Rows of position p of the compressed ids c (None = a dead token): for n = 2, 3, 4 the XOR of the last n tokens
    times their multipliers (pad where the n-gram reaches before the start or across a dead token), modulo each head's
    prime, offset by the sizes of the columns before it. primes: the layer's 3 x heads primes, n-gram major."""
    heads = len(primes) // 3
    tok, blocked = [], False
    for s in range(4):
        blocked = blocked or p - s < 0 or c[p - s] is None
        tok.append(pad if blocked else c[p - s])
    rows, off = [], 0
    for n in (2, 3, 4):
        v = 0
        for s in range(n):
            v ^= tok[s] * mult[s]
        for h in range(heads):
            P = primes[(n - 2) * heads + h]
            rows.append(v % P + off)
            off += P
    return rows
