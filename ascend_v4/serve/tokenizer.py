"""Text <-> token ids for `generate`: the project's one tokenizer module is ascend_v4/train/tokenizer.py (a
checkpoint's tokenizer.json or a sentencepiece .model); this adds what serving needs on top of it.

The demo checkpoint (random weights, vocab 512) ships no tokenizer, so `train_demo_tokenizer` trains a byte-level
BPE of exactly the model's vocabulary size on a text embedded below (well under a second, no download) and can
write it as the checkpoint's tokenizer.json. Ids 0 and 1 are <bos> and <eos>, matching the config's bos/eos ids.
`encode` never adds special tokens (the training convention); `prompt_ids` puts <bos> in front of a prompt.
"""
from __future__ import annotations

import os
import tempfile
from typing import List, Optional

from ..atomic import write_bytes
from ..train.data import DataError
from ..train.tokenizer import HFTokenizer, load_tokenizer as _load_tokenizer


class TokenizerError(ValueError):
    """No usable tokenizer, or text that does not tokenize."""


def load_tokenizer(checkpoint: Optional[str] = None, path: Optional[str] = None):
    """An explicit tokenizer file, else the tokenizer in CHECKPOINT (tokenizer.json, then a sentencepiece .model)."""
    hint = "pass --tokenizer FILE or give token ids with --tokens FILE.npy"
    if path and not os.path.isfile(path):
        raise TokenizerError(f"tokenizer file {path} does not exist; {hint}")
    if not path and not (checkpoint and any(n == "tokenizer.json" or n.endswith(".model")
                                            for n in os.listdir(checkpoint))):
        raise TokenizerError(f"no tokenizer: {checkpoint or '.'} has no tokenizer.json or sentencepiece *.model; {hint}")
    try:
        return _load_tokenizer(path or checkpoint)
    except DataError as e:
        raise TokenizerError(str(e)) from None


def prompt_ids(tok, text: str) -> List[int]:
    """<bos> (when the tokenizer has one) followed by the text's ids."""
    ids = tok.encode(text)
    return ([tok.bos_id] if tok.bos_id >= 0 else []) + ids


DEMO_TEXT = """\
DeepSeek-V4 is a mixture-of-experts language model. Every token passes through a stack of blocks, and each block
mixes four residual streams with manifold-constrained hyper-connections before attention and before the experts.
The attention of most layers does not look at every earlier token. A sliding window keeps the last tokens exactly,
while a compressor pools blocks of four or of one hundred twenty-eight tokens into single entries. Layers with
compressed sparse attention let a lightning indexer pick the most useful entries; layers with heavily compressed
attention read every entry, because there are so few of them. This is why long prompts stay cheap: the cache grows
by a small fraction of a vector per token, and a decode step reads the window, a few selected entries and the keys.
On Huawei Ascend processors the model runs in MindSpore graph mode. The graphs are compiled once for a shape and
then replayed, so the serving code keeps shapes static and passes positions as tensors. The window is a ring
buffer, the compressor keeps a small state between steps, and the cache is reset whenever a new sequence starts.
A speculative decoder can use the multi-token prediction block as a draft: it guesses the next token cheaply, the
main model checks the guess, and accepted guesses give two tokens for the price of one main step.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How vexingly quick daft
zebras jump! Sphinx of black quartz, judge my vow. The five boxing wizards jump quickly. Bright vixens jump;
dozy fowl quack. Numbers also matter: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 4096 65536 1048576.
Once upon a time there was a small model that wanted to speak. It had only random weights, so its words were
strange, but it could still count its tokens, keep its cache in order, and stop when it reached the end.
"""


def train_demo_tokenizer(vocab_size: int, out_path: Optional[str] = None) -> HFTokenizer:
    """Byte-level BPE with exactly `vocab_size` ids (<bos> = 0, <eos> = 1), trained on DEMO_TEXT; written to
    out_path as tokenizer.json when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 258 + 2:
        raise TokenizerError(f"a byte-level demo tokenizer needs a vocabulary of at least 260, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([DEMO_TEXT] * 4, trainer=trainer)
    if out_path:
        write_bytes(out_path, tok.to_str(pretty=True).encode("utf-8"))
        return HFTokenizer(out_path)
    with tempfile.TemporaryDirectory() as d:
        tok.save(os.path.join(d, "tokenizer.json"))
        return HFTokenizer(os.path.join(d, "tokenizer.json"))


def text_of(tok, ids) -> str:
    """Decode, skipping ids the tokenizer does not have (a model vocabulary can be larger than its tokenizer's)."""
    return tok.decode([int(i) for i in ids if 0 <= int(i) < tok.vocab_size])
