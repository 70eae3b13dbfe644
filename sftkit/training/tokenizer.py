"""Train a small XLM-R-style tokenizer from text, for tiny models in tests and the demo.

Real work uses the base model's own tokenizer. A tiny model built from a config has none, and the
demo must run offline, so this trains a byte-pair-encoding tokenizer (Metaspace word boundaries, as
SentencePiece marks them) with the ``tokenizers`` library, using the XLM-R special-token layout (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3,
``<mask>``=4) so the ids agree with :func:`sftkit.testing.tiny_config`.

BPE rather than XLM-R's Unigram because ``tokenizers``' Unigram trainer is not reproducible across
processes (its scores depend on hash-map iteration order, so token ids change from run to run); the
BPE trainer gives the same vocabulary every time, which makes the demo repeatable with a seed.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from sftkit.errors import ConfigError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 1000,
    lowercase: bool = False,
    model_max_length: int = 128,
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on ``texts`` and wrap it as a transformers fast tokenizer.

    The vocabulary may come out smaller than ``vocab_size`` on little text; size a model's embedding
    by ``len(tokenizer)``. Sequences are framed like XLM-R: ``<s> A </s>`` and ``<s> A </s></s> B </s>``.
    """
    corpus = [t for t in (str(x).strip() for x in texts) if t]
    if not corpus:
        raise ConfigError("train_tokenizer: no non-empty text to train on; pass some sentences")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ConfigError(f"train_tokenizer: vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=model_max_length,
    )
