"""Serving: KV cache, prefill / decode engine, sampling, MTP speculative decoding, `generate` command.

    from ascend_v4.serve import Engine, SamplingParams
    eng = Engine(cfg, weights, max_batch=2, max_len=1024)          # kv_int8=True, mtp=True optional
    gen = eng.generate([ids_a, ids_b], max_new_tokens=32, sampling=SamplingParams(temperature=0.8, top_p=0.9, seed=1))

Imports are lazy so `ascend_v4.serve.cli` loads without MindSpore until a command runs.
"""
__all__ = ["Engine", "Generation", "ServeError", "KVCache", "SamplingParams", "Sampler", "load_tokenizer",
           "train_demo_tokenizer"]


def __getattr__(name):
    if name in ("Engine", "Generation", "ServeError"):
        from . import engine
        return getattr(engine, name)
    if name == "KVCache":
        from .cache import KVCache
        return KVCache
    if name in ("SamplingParams", "Sampler"):
        from . import sampling
        return getattr(sampling, name)
    if name in ("load_tokenizer", "train_demo_tokenizer"):
        from . import tokenizer
        return getattr(tokenizer, name)
    raise AttributeError(name)
