"""Engram conditional memory in NumPy (float64 / exact int64): the golden every other backend is tested against.

Names follow DeepSeek's V4.1 `inference/engram.py` (`EngramLayout`, `NgramHashState`); the math is documented
in docs/deepseek-v4.1.md ("Engram"). Hashing is integer-exact, so every backend must match it bit for bit.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Sequence

import numpy as np

DEAD = -1                      # compressed id of a dead (non-text, e.g. image-span) position
HASH_SEED = 10007              # rng seed of Engram layer L is HASH_SEED · L
CLAMP = 1e-6                   # |dot| floor before the square root of the gate


# ----------------------------------------------------------------------------------- compressed token map ----
@functools.lru_cache(maxsize=1)
def _normalizer():
    # The normaliser sequence of DeepSeek's compressed map, built with the `tokenizers` library it comes from:
    # NFKC → NFD, StripAccents, Lowercase (char by char: Σ → σ always), [ \t\r\n]+ → " ", a lone " " survives
    # Strip via U+E000, Strip (Unicode White_Space at both ends).
    from tokenizers import Regex, normalizers as N
    return N.Sequence([N.NFKC(), N.NFD(), N.StripAccents(), N.Lowercase(), N.Replace(Regex(r"[ \t\r\n]+"), " "),
                       N.Replace(Regex(r"^ $"), "\ue000"), N.Strip(), N.Replace("\ue000", " ")])


def normalize_token_text(text: str) -> str:
    """The key text of a token for the compressed map (the `tokenizers` normaliser sequence above)."""
    return _normalizer().normalize_str(text)


def compressed_token_map(decoded: Sequence[str], raw_tokens: Sequence[str]) -> np.ndarray:
    """int64 [len(tokenizer)]: token id → compressed id, handed out in first-seen order of its key.

    decoded[i]: the tokenizer's decode([i]) (raw, specials kept, no clean-up); raw_tokens[i]: id_to_token(i).
    A partial UTF-8 token (its decode holds U+FFFD) keys by its raw vocab string; otherwise by the normalised
    text, or by the decoded text when that normalises to "". Raw and normalised keys share one dictionary."""
    if len(decoded) != len(raw_tokens):
        raise ValueError(f"decoded ({len(decoded)}) and raw_tokens ({len(raw_tokens)}) must cover the same ids")
    seen: Dict[str, int] = {}
    out = np.empty(len(decoded), np.int64)
    for i, (text, raw) in enumerate(zip(decoded, raw_tokens)):
        key = raw if "\ufffd" in text else (normalize_token_text(text) or text)
        out[i] = seen.setdefault(key, len(seen))
    return out


def compressed_token_map_from_tokenizer(tokenizer) -> np.ndarray:
    """The map of a `tokenizers.Tokenizer` (e.g. `Tokenizer.from_file("tokenizer.json")` of the serving revision):
    decode([id]) with specials kept, id_to_token for partial UTF-8 tokens. Compute once and ship the array: its
    number of distinct ids must equal the config's engram_compressed_vocab_size."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    decoded = [tokenizer.decode([i], skip_special_tokens=False) for i in range(n)]
    raw = [tokenizer.id_to_token(i) or "" for i in range(n)]
    return compressed_token_map(decoded, raw)


# --------------------------------------------------------------------------------------------- layout --------
def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (the first 13 prime bases)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def engram_primes(n_engram_layers: int, vocab_size: int, max_ngram: int, n_heads: int) -> List[np.ndarray]:
    """Bucket sizes per Engram layer, int64 [(max_ngram−1)·n_heads] in column order c = (n−2)·n_heads + head.

    For each layer, each n-gram size, each head: the smallest prime strictly above the previous one of this
    (layer, n) — starting at vocab_size − 1 — that no earlier (layer, n, head) took (`EngramLayout`)."""
    taken = set()
    out = []
    for _ in range(n_engram_layers):
        cols = []
        for _n in range(2, max_ngram + 1):
            p = vocab_size - 1
            for _h in range(n_heads):
                p += 1
                while not _is_prime(p) or p in taken:
                    p += 1
                taken.add(p)
                cols.append(p)
        out.append(np.array(cols, np.int64))
    return out


def column_offsets(primes: np.ndarray) -> np.ndarray:
    """First table row of each column: the exclusive cumulative sum of the layer's primes."""
    return np.concatenate([[0], np.cumsum(primes)[:-1]]).astype(np.int64)


def hash_multipliers(layer_id: int, compressed_vocab_size: int, max_ngram: int) -> np.ndarray:
    """int64 [max_ngram] odd multipliers m = 2r + 1, r ~ numpy PCG64(seed 10007·L).integers(0, bound)."""
    bound = max(1, ((2 ** 63 - 1) // compressed_vocab_size) // 2)
    r = np.random.default_rng(HASH_SEED * layer_id).integers(low=0, high=bound, size=max_ngram, dtype=np.int64)
    return r * 2 + 1


# --------------------------------------------------------------------------------------------- hashing -------
def ngram_hash(hist: np.ndarray, multipliers: np.ndarray, primes: np.ndarray, offsets: np.ndarray,
               pad_id: int, n_heads: int) -> np.ndarray:
    """Hash ids of every position from its lookback window.

    hist int64 [..., max_ngram]: hist[..., s] = compressed id s positions back (s = 0 is the token itself),
    DEAD for a dead token, and DEAD for positions before the sequence start. A slot is blocked once any shorter
    lookback is blocked; blocked slots take pad_id. Returns int64 [..., (max_ngram−1)·n_heads] table rows
    (offsets added): (v_{n−1} mod P) + off, with v_1 = t0·m0 ^ t1·m1, v_k = v_{k−1} ^ t_k·m_k."""
    hist = np.asarray(hist, np.int64)
    max_ngram = hist.shape[-1]
    blocked = np.cumsum(hist == DEAD, axis=-1) > 0
    tok = np.where(blocked, np.int64(pad_id), hist)
    v = tok[..., 0] * multipliers[0]
    cols = []
    for s in range(1, max_ngram):
        v = v ^ (tok[..., s] * multipliers[s])
        p = primes[(s - 1) * n_heads:s * n_heads]
        cols.append(v[..., None] % p + offsets[(s - 1) * n_heads:s * n_heads])
    return np.concatenate(cols, axis=-1)


class NgramHashState:
    """Per-sequence Engram hash state: the last max_ngram−1 compressed ids (DEAD-marked), carried across
    prefill and decode calls so any split of a sequence into chunks hashes like one call.

    `token_map` maps raw token ids to compressed ids (None: ids are already compressed). One instance serves
    every Engram layer of a model: call() returns int64 [B, S, n_engram_layers, columns]. `hash_fn` may be the
    C++ kernel (`ops.engram.cpp.ngram_hash_cpp`, same signature, bit-exact) for the host prefetch path."""

    def __init__(self, batch: int, layer_ids: Sequence[int], vocab_size: int, max_ngram: int, n_heads: int,
                 pad_id: int, compressed_vocab_size: int, token_map: Optional[np.ndarray] = None, hash_fn=None):
        self.hash_fn = hash_fn or ngram_hash
        self.token_map = None if token_map is None else np.asarray(token_map, np.int64)
        self.pad_c = int(pad_id if token_map is None else self.token_map[pad_id])
        self.max_ngram, self.n_heads = max_ngram, n_heads
        self.primes = engram_primes(len(layer_ids), vocab_size, max_ngram, n_heads)
        self.offsets = [column_offsets(p) for p in self.primes]
        self.multipliers = [hash_multipliers(L, compressed_vocab_size, max_ngram) for L in layer_ids]
        self.history = np.full((batch, max_ngram - 1), DEAD, np.int64)    # newest last
        self.length = np.zeros(batch, np.int64)

    @classmethod
    def for_config(cls, cfg, batch: int, token_map: Optional[np.ndarray] = None, hash_fn=None) -> "NgramHashState":
        return cls(batch, cfg.engram_layer_ids, cfg.engram_vocab_size, cfg.engram_max_ngram_size,
                   cfg.engram_n_heads, cfg.engram_pad_id, cfg.engram_compressed_vocab_size, token_map, hash_fn)

    def reset(self, rows: Optional[Sequence[int]] = None) -> None:
        rows = slice(None) if rows is None else list(rows)
        self.history[rows] = DEAD
        self.length[rows] = 0

    def peek(self, ids: np.ndarray, text_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """The hashes call() would return for this chunk, without advancing the state."""
        return self._hash(ids, text_mask)[0]

    def __call__(self, ids: np.ndarray, text_mask: Optional[np.ndarray] = None) -> np.ndarray:
        out, self.history = self._hash(ids, text_mask)
        self.length = self.length + np.asarray(ids).shape[1]
        return out

    def _hash(self, ids, text_mask):
        ids = np.asarray(ids, np.int64)
        c = ids if self.token_map is None else self.token_map[ids]      # map before masking: ids must be valid
        if text_mask is not None:
            c = np.where(np.asarray(text_mask, bool), c, DEAD)
        seq = np.concatenate([self.history, c], axis=1)                  # [B, k + S]
        k, S = self.max_ngram - 1, ids.shape[1]
        # hist[b, t, s] = seq[b, k + t − s]
        idx = k + np.arange(S)[:, None] - np.arange(self.max_ngram)[None, :]
        hist = seq[:, idx]
        out = np.stack([self.hash_fn(hist, m, p, o, self.pad_c, self.n_heads)
                        for m, p, o in zip(self.multipliers, self.primes, self.offsets)], axis=2)
        return out, seq[:, -k:].copy()


# ------------------------------------------------------------------------------------- lookup and gate -------
def engram_lookup(table, ids):
    """table [rows, d], ids int [..., C] → [..., C·d]: the rows of every column, concatenated in column order."""
    ids = np.asarray(ids, np.int64)
    e = np.asarray(table, np.float64)[ids]
    return e.reshape(*ids.shape[:-1], ids.shape[-1] * e.shape[-1])


def engram_gate(h, kv, q_weight, k_weight, alive, eps=1e-20):
    """The gated read into each mHC stream.

    h [..., hc, D] the block input streams; kv [..., (hc+1)·D] = wkv(e) (per-stream keys, then one value);
    q_weight, k_weight [hc, D]; alive [...] (1 text token, 0 dead). Per stream s, with w = q_weight·k_weight:
      dot_s = Σ_d h_s·w_s·key_s · rsqrt(mean h_s² + eps) · rsqrt(mean key_s² + eps) / √D
      g_s   = sigmoid(sign(dot_s)·sqrt(max(|dot_s|, 1e-6))) · alive,   out_s = h_s + g_s·value."""
    h = np.asarray(h, np.float64)
    hc, D = h.shape[-2], h.shape[-1]
    kv = np.asarray(kv, np.float64)
    key = kv[..., :hc * D].reshape(*kv.shape[:-1], hc, D)
    value = kv[..., hc * D:]
    w = np.asarray(q_weight, np.float64) * np.asarray(k_weight, np.float64)
    rh = 1.0 / np.sqrt(np.mean(h * h, axis=-1) + eps)
    rk = 1.0 / np.sqrt(np.mean(key * key, axis=-1) + eps)
    dot = np.sum(h * w * key, axis=-1) * rh * rk / np.sqrt(D)
    g = 1.0 / (1.0 + np.exp(-np.copysign(np.sqrt(np.maximum(np.abs(dot), CLAMP)), dot)))
    g = g * np.asarray(alive, np.float64)[..., None]
    return h + g[..., None] * value[..., None, :]


def engram_dequant(rows, scales):
    """INT8 (or any integer) rows [..., n·g] × per-group scales [..., n] → float rows: the device-side decode of
    rows the host shipped in their stored format (4× fewer bytes than float32)."""
    rows = np.asarray(rows, np.float64)
    scales = np.asarray(scales, np.float64)
    g = rows.shape[-1] // scales.shape[-1]
    return (rows.reshape(*scales.shape, g) * scales[..., None]).reshape(rows.shape)
