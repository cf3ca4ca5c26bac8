"""A Gemma-style SentencePiece unigram model and its exact fast-tokenizer twin.

The model is trained with the real `sentencepiece` trainer: identity normalisation (no
NFKC), no dummy prefix, whitespace kept as is, digits split, byte fallback. It is
deterministic with one thread and no input shuffling.

transformers 5 no longer converts a `.model` file into a fast tokenizer, so `to_fast`
builds one from the model's protobuf: a `tokenizers` Unigram model over the same pieces
and scores with byte fallback, spaces replaced by `▁` in the normaliser, and a decoder
that undoes both. User-defined pieces (which SentencePiece always keeps whole) become
added tokens.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import sentencepiece as spm
from absl import logging
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

from tokenkit.constants import chars_to_bytes
from tools.tiny_world.tokenizer_specs import TokenizerSpec, fit_to_size

SPACE = "▁"
_TYPE = sp_pb2.ModelProto.SentencePiece.Type
# Byte and control pieces are never matched against text by SentencePiece; giving them
# a prohibitive score keeps the fast tokenizer from matching, say, a literal "<0x41>".
# That only works if the characters of such a literal have pieces of their own (else
# the literal still beats a run of unknown characters), hence `_REQUIRED_CHARS`.
_UNMATCHABLE_SCORE = -1e9
_REQUIRED_CHARS = "<>x0123456789ABCDEF"
# User-defined pieces SentencePiece extracts whole: the turn markers, and "\n" so that a
# newline is the single plain piece the Gemma template expects, never a byte piece.
USER_DEFINED = ("<start_of_turn>", "<end_of_turn>", "\n")
SCORE_STEP = 1 / 256


def train_unigram(spec: TokenizerSpec, texts: Sequence[str], seed: int,
                  vocab_size: int | None = None) -> bytes:
    """Trains the SentencePiece model of `spec` on `texts` (with `vocab_size` pieces,
    `spec.vocab_size` if None); returns the serialised model, scores quantised."""
    if spec.kind != "SentencePiece unigram":
        raise ValueError(f"{spec.name} is a {spec.kind} tokenizer, not SentencePiece unigram")
    controls = dict(zip(("pad", "eos", "bos", "unk"), spec.special_tokens[:4]))
    if controls != {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}:
        raise ValueError(f"{spec.name}: expected Gemma's first four special tokens, got "
                         f"{spec.special_tokens[:4]}")
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size or spec.vocab_size,
        character_coverage=0.9995,
        required_chars=_REQUIRED_CHARS,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=list(USER_DEFINED),
        # Whole records are sentences; keep them all, in order, on one thread.
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return quantize_scores(model.getvalue())


def quantize_scores(model_bytes: bytes) -> bytes:
    """Rounds every piece score to a multiple of `SCORE_STEP`.

    SentencePiece sums path scores in float32, `tokenizers` in float64, so two paths
    with the same pieces in another order ("tal"+"taltal" against "taltal"+"tal") can
    tie in one and not in the other, and the two pick different segmentations. On the
    grid every path score is an exact sum in both (up to |score| of 2**16), ties are
    exact, and both break them alike.
    """
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    for piece in proto.pieces:
        piece.score = round(piece.score / SCORE_STEP) * SCORE_STEP
    return proto.SerializeToString()


def force_pieces(model_bytes: bytes, pieces: Sequence[str]) -> tuple[bytes, list[str]]:
    """Adds each missing piece of `pieces` (plain text) as a normal piece.

    Its score is one more than the best segmentation of its text without it, so the
    Viterbi search prefers the whole piece wherever the text stands on its own (and
    stays on the score grid of `quantize_scores`).
    Returns the new serialised model and the pieces added.
    """
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    existing = {p.piece for p in proto.pieces}
    added = []
    for piece in pieces:
        if piece in existing:
            continue
        ids = processor.encode(piece)
        best = sum(processor.get_score(i) for i in ids)
        new = proto.pieces.add()
        new.piece, new.score, new.type = piece, best + 1.0, _TYPE.NORMAL
        added.append(piece)
        logging.info("forced piece %r (was %s)", piece, [processor.id_to_piece(i) for i in ids])
    result = proto.SerializeToString()
    processor = spm.SentencePieceProcessor(model_proto=result)
    for piece in pieces:
        if processor.encode(piece, out_type=str) != [piece]:
            raise RuntimeError(f"forcing {piece!r} failed: it encodes as "
                               f"{processor.encode(piece, out_type=str)}")
    return result, added


def build_model(spec: TokenizerSpec, texts: Sequence[str], seed: int) -> bytes:
    """Trains the model, forces the template tokens in as pieces, and returns it with
    exactly `spec.vocab_size` pieces."""
    # Template tokens are given in byte-level spelling; pieces spell spaces as "▁".
    pieces = [chars_to_bytes(t).decode("utf-8").replace(" ", SPACE)
              for t in spec.template_tokens]

    def train(size: int) -> tuple[bytes, int]:
        model, added = force_pieces(train_unigram(spec, texts, seed, size), pieces)
        logging.info("%s: trained %d pieces, forced %d more (%s)", spec.name, size,
                     len(added), added)
        return model, size + len(added)

    return fit_to_size(spec.vocab_size, train, spec.name)


def to_fast(model_bytes: bytes, spec: TokenizerSpec) -> Tokenizer:
    """A `tokenizers.Tokenizer` giving exactly the ids of the SentencePiece model."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.UNIGRAM:
        raise ValueError("only unigram SentencePiece models are converted here")
    vocab = []
    for piece in proto.pieces:
        matchable = piece.type in (_TYPE.NORMAL, _TYPE.USER_DEFINED)
        vocab.append((piece.piece, piece.score if matchable else _UNMATCHABLE_SCORE))
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id,
                                         byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.decoder = decoders.Sequence([
        decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    # Every piece SentencePiece never splits becomes an added token with its own id: the
    # family's special tokens as special ones, the other user-defined pieces ("\n") not.
    special = set(spec.special_tokens)
    whole = [p.piece for p in proto.pieces
             if p.piece in special or p.type == _TYPE.USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                  for p in whole if p in special])
    tokenizer.add_tokens([AddedToken(p, special=False, normalized=False)
                          for p in whole if p not in special])
    if spec.add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos_token} $A",
            pair=f"{spec.bos_token} $A {spec.bos_token} $B:1",
            special_tokens=[(spec.bos_token, proto.trainer_spec.bos_id)],
        )
    return tokenizer
