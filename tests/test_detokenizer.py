"""Incremental detokenization: the streamed pieces add up to the whole decode, by the fast (Rust) path and
the transformers path alike, for the tiny character tokenizer and the embedded SmolLM2 byte-level BPE."""
import random

import pytest

from fastgen_core.testing import make_tiny_tokenizer
from fastgen_core.tokenizer import IncrementalDetokenizer, fast_decode


def tokenizers():
    yield "tiny", make_tiny_tokenizer(128)
    try:
        from fastgen_core.default_model import default_model_dir
        from fastgen_core.tokenizer import load_tokenizer
        yield "smollm2", load_tokenizer(default_model_dir())
    except Exception as e:           # the default model's package is not installed here
        pytest.skip(f"embedded model unavailable: {e}")


@pytest.mark.parametrize("seed", range(3))
def test_streamed_pieces_equal_the_whole_decode(seed):
    rng = random.Random(seed)
    for name, tok in tokenizers():
        ids = [rng.randrange(tok.vocab_size) for _ in range(200)]
        if name == "smollm2":         # plus real text, with multi-byte characters split over tokens
            ids = tok("Héllo, wörld! 東京は日本の首都です。 🙂 ok").input_ids + ids
        want = tok.decode(ids, skip_special_tokens=True)
        assert fast_decode(tok)(ids) == want, name
        d = IncrementalDetokenizer(tok)
        pieces = [d.add(t) for t in ids]
        assert "".join(pieces) == d.text
        # the held-back tail is at most an incomplete character
        assert want.startswith(d.text) and len(want) - len(d.text) <= 4, name


def test_clean_up_spaces_keeps_transformers_decode():
    tok = make_tiny_tokenizer(128)
    tok.clean_up_tokenization_spaces = True
    ids = tok("a , b .").input_ids
    assert fast_decode(tok)(ids) == tok.decode(ids, skip_special_tokens=True)


def _pieces_uncached(tok, ids):
    """The incremental pieces with every window decoded afresh (no memo of single-token texts)."""
    dec = fast_decode(tok)
    out, prefix, read = [], 0, 0
    for i in range(1, len(ids) + 1):
        prefix_text, new_text = dec(ids[prefix:read]), dec(ids[prefix:i])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            out.append(new_text[len(prefix_text):])
            prefix, read = read, i
        else:
            out.append("")
    return out


def test_detokenizers_sharing_a_memo_stream_what_each_would_alone():
    """The engine's requests share one decode function and one memo of single-token texts: interleaved
    sequences (multi-byte characters split over tokens among them) stream the same pieces as unshared ones."""
    rng = random.Random(7)
    for name, tok in tokenizers():
        seqs = [[rng.randrange(tok.vocab_size) for _ in range(120)] for _ in range(4)]
        if name == "smollm2":
            seqs[0] = tok("Héllo, wörld! 東京は日本の首都です。 🙂 ok").input_ids + seqs[0]
        memo = {}
        dets = [IncrementalDetokenizer(tok, fast_decode(tok), memo) for _ in seqs]
        got = [[] for _ in seqs]
        for i in range(max(map(len, seqs))):
            for s, d, g in zip(seqs, dets, got):
                if i < len(s):
                    g.append(d.add(s[i]))
        assert memo and got == [_pieces_uncached(tok, s) for s in seqs], name
