"""SentencePiece tokenizer of the image-text methods, as big_vision's text pipeline uses one.

A run's tokenizer is `config.text.tokenizer` (a user-given SentencePiece `.model`), or, when
that is "", one trained on the training captions the first time the run starts and stored as
`WORKDIR/tokenizer.model`, which evaluation and every resume read back (`for_run`).

    ids = [BOS] + pieces + [EOS], cut to L keeping [EOS] last, padded with PAD = 0   -> [N, L] int32
          (padded with EOS instead with config.text.sticky_eos: big_vision's SigLIP)

The special ids are fixed (PAD 0, UNK 1, BOS 2, EOS 3) for a trained model; a user's model brings
its own, and its pad id must be 0 (the text tower pools at the last non-PAD token). Captions are
case-folded by the trained model's normaliser (`nmt_nfkc_cf`), as OpenAI CLIP's tokenizer lower-cases.
"""
from __future__ import annotations

import io
from typing import Iterable

import jax
import numpy as np
import sentencepiece as spm

from ssl_jax import paths
from ssl_jax.errors import UserError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FILE_NAME = "tokenizer.model"


class Tokenizer:
    """A SentencePiece model: `encode` texts -> [N, L] int32 ids, `decode` ids -> texts."""

    def __init__(self, model_proto: bytes):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        if self.sp.pad_id() != PAD:
            raise UserError(f"the tokenizer's pad id is {self.sp.pad_id()}, not {PAD}; train the SentencePiece "
                            f"model with --pad_id=0 (the text tower pools at the last non-pad token)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Iterable[str], max_len: int, sticky_eos: bool = False) -> np.ndarray:
        """[N, max_len] int32: BOS, the pieces, EOS (kept as the last token when cut), PAD after, or EOS
        after with `sticky_eos` (big_vision's `tokenize(eos="sticky", pad_value=EOS)`)."""
        bos, eos = self.sp.bos_id(), self.sp.eos_id()
        rows = []
        for ids in self.sp.encode(list(texts)):
            ids = ([bos] if bos >= 0 else []) + ids[:max_len] + ([eos] if eos >= 0 else [])
            ids = ids[:max_len - 1] + ids[-1:] if len(ids) > max_len else ids
            rows.append(ids + [eos if sticky_eos else PAD] * (max_len - len(ids)))
        return np.asarray(rows, np.int32).reshape(-1, max_len)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Texts of [N, L] ids (special ids dropped)."""
        return [self.sp.decode([int(i) for i in row if i > EOS]) for row in np.asarray(ids)]


def train(captions: Iterable[str], vocab_size: int) -> Tokenizer:
    """A unigram SentencePiece model of at most `vocab_size` pieces trained on `captions` (single-threaded:
    the same captions give the same model)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, character_coverage=1.0, hard_vocab_limit=False,
        normalization_rule_name="nmt_nfkc_cf", num_threads=1, minloglevel=2)
    return Tokenizer(model.getvalue())


def load(path) -> Tokenizer:
    """The SentencePiece `.model` at `path` (any filesystem)."""
    path = paths.resolve(path)
    if not path.exists():
        raise UserError(f"tokenizer {path} does not exist; set --config.text.tokenizer to a SentencePiece .model "
                        f"or to '' (one is trained on the training captions)")
    return Tokenizer(path.read_bytes())


def for_run(text_cfg, workdir: str | None, captions=None) -> Tokenizer:
    """The run's tokenizer: config.text.tokenizer if set, else WORKDIR/tokenizer.model, trained first on
    `captions()` (a callable giving the training captions) when the workdir has none yet."""
    if text_cfg.tokenizer:
        tokenizer = load(text_cfg.tokenizer)
    else:
        if workdir is None:
            raise UserError("config.text.tokenizer is '' (train one) but no workdir was given to store it in")
        path = paths.resolve(workdir) / FILE_NAME
        if path.exists():
            tokenizer = Tokenizer(path.read_bytes())
        elif captions is None:
            raise UserError(f"no {FILE_NAME} in {workdir}: train the run first or set --config.text.tokenizer")
        else:
            tokenizer = train(captions(), text_cfg.vocab_size)  # every process trains the same model
            if jax.process_index() == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tokenizer.model_proto)
    if tokenizer.vocab_size > text_cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} pieces, more than config.text.vocab_size="
                        f"{text_cfg.vocab_size}; raise it")
    return tokenizer
