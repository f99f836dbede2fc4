"""Text <-> token ids for `generate`: a checkpoint's tokenizer.json (HF tokenizers) or a sentencepiece .model.

The demo checkpoint (random weights, vocab 512) ships no tokenizer, so `train_demo_tokenizer` trains a byte-level
BPE of exactly the model's vocabulary size on a text embedded below (well under a second, no download) and can
write it as the checkpoint's tokenizer.json. Ids 0 and 1 are <bos> and <eos>, matching the config's bos/eos ids.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional


class TokenizerError(ValueError):
    """No usable tokenizer, or text that does not tokenize."""


class TextTokenizer:
    """encode(text) -> ids, decode(ids) -> text, over either backend."""

    def __init__(self, backend, kind: str, source: str):
        self._tok, self.kind, self.source = backend, kind, source

    @property
    def vocab_size(self) -> int:
        if self.kind == "tokenizers":
            return self._tok.get_vocab_size(with_added_tokens=True)
        return self._tok.get_piece_size()

    def encode(self, text: str) -> List[int]:
        if self.kind == "tokenizers":
            return list(self._tok.encode(text).ids)
        return list(self._tok.encode(text))

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
        if self.kind == "tokenizers":
            return self._tok.decode(ids, skip_special_tokens=True)
        return self._tok.decode(ids)

    def save(self, path: str) -> None:
        if self.kind != "tokenizers":
            raise TokenizerError("only a tokenizers (tokenizer.json) tokenizer can be saved")
        tmp = path + ".tmp"
        self._tok.save(tmp)
        os.replace(tmp, path)


def _from_file(path: str) -> TextTokenizer:
    if path.endswith(".json"):
        try:
            from tokenizers import Tokenizer
            return TextTokenizer(Tokenizer.from_file(path), "tokenizers", path)
        except Exception as e:  # the library raises plain Exception subclasses with long messages
            raise TokenizerError(f"{path} is not a readable tokenizers file: {str(e).splitlines()[0]}") from None
    try:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor()
        sp.Load(path)
        return TextTokenizer(sp, "sentencepiece", path)
    except Exception as e:
        raise TokenizerError(f"{path} is not a readable sentencepiece model: {str(e).splitlines()[0]}") from None


def load_tokenizer(checkpoint: Optional[str] = None, path: Optional[str] = None) -> TextTokenizer:
    """An explicit tokenizer file, else CHECKPOINT/tokenizer.json, else a sentencepiece *.model in CHECKPOINT."""
    if path:
        if not os.path.isfile(path):
            raise TokenizerError(f"tokenizer file {path} does not exist")
        return _from_file(path)
    if checkpoint:
        tj = os.path.join(checkpoint, "tokenizer.json")
        if os.path.isfile(tj):
            return _from_file(tj)
        models = sorted(glob.glob(os.path.join(checkpoint, "*.model")))
        if models:
            return _from_file(models[0])
    raise TokenizerError(f"no tokenizer: {checkpoint or '.'} has no tokenizer.json or sentencepiece *.model; pass "
                         f"--tokenizer FILE or give token ids with --tokens FILE.npy")


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


def train_demo_tokenizer(vocab_size: int, out_path: Optional[str] = None) -> TextTokenizer:
    """Byte-level BPE with exactly `vocab_size` ids (<bos> = 0, <eos> = 1), trained on DEMO_TEXT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    if vocab_size < 258 + 2:
        raise TokenizerError(f"a byte-level demo tokenizer needs a vocabulary of at least 260, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([DEMO_TEXT] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    t = TextTokenizer(tok, "tokenizers", out_path or "<demo>")
    if out_path:
        t.save(out_path)
    return t
