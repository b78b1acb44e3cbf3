"""The `unicode` family against TensorFlow: `tf.strings.unicode_decode` (with offsets),
`unicode_encode`, `unicode_transcode` and `tf.strings.ngrams`, on fed strings and on constants
(folded, also under jax.jit), with TF's handling of invalid input (ICU's, for the decoders)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import compare_host_ops as check
from oracle import get_tf

import jaxmeta

pytestmark = pytest.mark.oracle

TEXT = np.array(["Hello", "", "Ünïcode Straße", "日本語 😀", "tab\tnul\0end", "\ufffd\ufffe\uffff\U0010ffff"], object)
UTF8 = np.array([s.encode() for s in TEXT], object)
#: Invalid UTF-8, one maximal invalid subsequence (one replacement) per case unless noted: a truncated
#: 3- and 4-byte character (at the end, and before "a"), a UTF-8 surrogate (3), an overlong NUL (2),
#: above U+10FFFF (4), stray continuation bytes (2), a 5-byte form (5), bytes never valid.
BROKEN = np.array([b"\xe2\x82", b"\xe2\x82a", b"\xf0\x9f\x98", b"x\xf0\x9f\x98a", b"\xed\xa0\x80", b"\xc0\x80",
                   b"\xf4\x90\x80\x80", b"\x80\xbf", b"\xf8\x88\x80\x80\x80", b"\xff\xfe", b"ok\xc3\xa9\xc3"], object)


def fed(tf, values, name="s"):
    return tf.compat.v1.placeholder(tf.string, np.shape(values), name=name)


def decodes(tf, s, encoding, **attrs):
    """UnicodeDecode and UnicodeDecodeWithOffsets' outputs, under each errors policy."""
    outs = []
    for errors in ("replace", "ignore"):
        outs += tf.raw_ops.UnicodeDecodeWithOffsets(input=s, input_encoding=encoding, errors=errors, **attrs)
        outs += tf.raw_ops.UnicodeDecode(input=s, input_encoding=encoding, errors=errors, **attrs)
    return outs


def test_decode_utf8():
    def build(tf):
        s = fed(tf, np.concatenate([UTF8, BROKEN]))
        return [*decodes(tf, s, "UTF-8"), *decodes(tf, s, "UTF-8", replacement_char=0x2A),
                *decodes(tf, s, "utf8", replacement_char=0xD800, replace_control_characters=True),
                *tf.raw_ops.UnicodeDecode(input=s, input_encoding="UTF-8", Tsplits=tf.int32)]

    check(build, {"s:0": np.concatenate([UTF8, BROKEN])})


def test_decode_counts_one_replacement_per_maximal_invalid_subsequence():
    def build(tf):
        return list(tf.raw_ops.UnicodeDecodeWithOffsets(input=BROKEN, input_encoding="UTF-8", replacement_char=0x2A))

    check(build)
    meta, names = _meta(build)
    splits, values, starts = jaxmeta.import_meta_graph(meta).function(names)({})
    assert np.diff(splits).tolist() == [1, 2, 1, 3, 3, 2, 4, 2, 5, 2, 4]
    assert np.asarray(values)[-4:].tolist() == [ord("o"), ord("k"), 0xE9, 0x2A]
    assert np.asarray(starts)[-4:].tolist() == [0, 1, 2, 4]


@pytest.mark.parametrize("encoding, python", [
    ("UTF-16-BE", "utf-16-be"), ("UTF-16LE", "utf-16-le"), ("UTF-32-BE", "utf-32-be"), ("utf_32le", "utf-32-le"),
    ("US-ASCII", "latin-1"), ("ISO-8859-1", "latin-1"), ("latin1", "latin-1"),
])
def test_decode_other_encodings(encoding, python):
    text = TEXT if python != "latin-1" else np.array([s.encode("latin-1", "replace").decode("latin-1") for s in TEXT])
    valid = np.array([s.encode(python) for s in text], object)
    # truncated units, lone and swapped surrogates, code points beyond U+10FFFF, bytes >= 0x80
    broken = np.array([b"\x00a\x00", b"\xd8\x00\x00a", b"\xdc\x00\xd8\x00", b"\xd8=\xde", b"=\xd8\x00",
                       b"\x00\x11\x00\x00\x00\x00\x00a", b"\x00\x00\xdc\x00\x00\x00\x01", b"\xff\xff\xff\xff\x80"],
                      object)

    def build(tf):
        s, t = fed(tf, valid), fed(tf, broken, "t")  # all valid (decoded as a batch), and not
        return [*decodes(tf, s, encoding, replace_control_characters=True),
                *decodes(tf, t, encoding, replacement_char=0x2A, replace_control_characters=True),
                *tf.raw_ops.UnicodeDecodeWithOffsets(input=t, input_encoding=encoding)]

    check(build, {"s:0": valid, "t:0": broken})


def test_decode_any_rank():
    def build(tf):
        grid = tf.constant(UTF8[:4].reshape(2, 2))
        ragged = tf.strings.unicode_decode(grid, "UTF-8")
        chars, starts = tf.strings.unicode_decode_with_offsets(tf.constant(BROKEN[:3]), "UTF-8", errors="ignore")
        return [*tf.raw_ops.UnicodeDecodeWithOffsets(input=grid, input_encoding="UTF-8"),
                *tf.raw_ops.UnicodeDecode(input=tf.constant("😀x"), input_encoding="UTF-8"),
                ragged.flat_values, *ragged.nested_row_splits, chars.flat_values, starts.flat_values,
                chars.row_splits, tf.strings.unicode_split(tf.constant(UTF8[2]), "UTF-8")]

    check(build)


def test_transcode():
    values = np.concatenate([UTF8, BROKEN, [b"a\x01b\x1f"]]).reshape(3, 6)

    def build(tf):
        s = fed(tf, values)
        outs = []
        for output in ("UTF-8", "UTF-16-BE", "UTF-32-BE"):
            for errors in ("replace", "ignore"):
                outs.append(tf.raw_ops.UnicodeTranscode(input=s, input_encoding="UTF-8", output_encoding=output,
                                                        errors=errors))
                outs.append(tf.raw_ops.UnicodeTranscode(input=s, input_encoding="UTF-8", output_encoding=output,
                                                        errors=errors, replacement_char=0xDC00,
                                                        replace_control_characters=True))
        utf16 = tf.strings.unicode_transcode(s, "UTF-8", "UTF-16-BE")
        return [*outs, tf.strings.unicode_transcode(utf16, "UTF-16-BE", "UTF-8"),
                tf.strings.unicode_transcode(utf16[0, 0], "UTF-16-BE", "UTF-32-BE", replacement_char=0x1F600)]

    check(build, {"s:0": values})


CODES = np.array([0x48, 0xE9, -1, 0x65E5, 0x1F600, 0xD800, 0xDC00, 0x10FFFF, 0x110000, 0, 0x1F, 0xFFFF, 2**31 - 1],
                 np.int32)


def test_encode():
    def build(tf):
        v = tf.compat.v1.placeholder(tf.int32, [None], name="v")
        splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
        outs = []
        for output in ("UTF-8", "UTF-16-BE", "UTF-32-BE"):
            for errors in ("replace", "ignore"):
                for replacement in (0xFFFD, 0x2A, 0xD800, 0x1F600):
                    outs.append(tf.raw_ops.UnicodeEncode(input_values=v, input_splits=splits, output_encoding=output,
                                                         errors=errors, replacement_char=replacement))
            outs.append(tf.raw_ops.UnicodeEncode(input_values=tf.gather(v, [0, 1, 3, 4, 7]),
                                                 input_splits=tf.constant([0, 0, 5, 5], tf.int32),
                                                 output_encoding=output, errors="strict"))
        return outs

    check(build, {"v:0": CODES, "splits:0": np.array([0, 2, 2, 7, 13], np.int64)})


def test_encode_ragged_and_dense():
    def build(tf):
        ragged = tf.ragged.constant([[[0x61, 0x62], [0x1F600]], [[]], [[0xE9, -5, 0x63]]], tf.int32)
        dense = tf.constant([[0x41, 0x42], [0x10000, 0x43]], tf.int32)
        return [tf.strings.unicode_encode(ragged, "UTF-8").flat_values,
                tf.strings.unicode_encode(dense, "UTF-16-BE", errors="ignore"),
                tf.strings.unicode_encode(tf.constant([0x41, 0xD800], tf.int32), "UTF-32-BE", replacement_char=0)]

    check(build)


def ngram_ops(tf, data, splits):
    outs = []
    for separator in (" ", "", "--"):
        for widths in ([1], [2], [3], [1, 2, 3], [4, 2], [7]):
            for pad_width in (-1, 0, 1, 2, 5):
                for preserve in (False, True):
                    outs += tf.raw_ops.StringNGrams(data=data, data_splits=splits, separator=separator,
                                                    ngram_widths=widths, left_pad="<L>",
                                                    right_pad="" if pad_width == 2 else "R", pad_width=pad_width,
                                                    preserve_short_sequences=preserve)
    outs += tf.raw_ops.StringNGrams(data=data, data_splits=splits, separator="_", ngram_widths=[], left_pad="(",
                                    right_pad=")", pad_width=1, preserve_short_sequences=True)
    return outs


def test_ngrams():
    words = np.array([b"the", b"quick", b"", b"fox", b"jumps", b"over", b"a", b"lazy", b"dog"], object)
    splits = np.array([0, 0, 1, 5, 5, 9], np.int64)

    def build(tf):
        data = fed(tf, words, "w")
        return ngram_ops(tf, data, tf.compat.v1.placeholder(tf.int64, [None], name="splits"))

    check(build, {"w:0": words, "splits:0": splits})


def test_ngrams_api_and_empty():
    def build(tf):
        ragged = tf.ragged.constant([["a", "b", "c", "d"], [], ["e"]])
        dense = tf.constant([["a", "b", "c"], ["d", "e", "f"]])
        grams = tf.strings.ngrams(ragged, [2, 3], separator="+", pad_values=("<", ">"), padding_width=1)
        short = tf.strings.ngrams(ragged, 3, preserve_short_sequences=True)
        empty = [tf.raw_ops.StringNGrams(data=tf.constant(["x", "y"]), data_splits=tf.constant([], tf.int32),
                                         separator=" ", ngram_widths=[2], left_pad="", right_pad="", pad_width=0,
                                         preserve_short_sequences=False),
                 tf.raw_ops.StringNGrams(data=tf.constant([], tf.string), data_splits=tf.constant([0, 0, 0]),
                                         separator=" ", ngram_widths=[1], left_pad="", right_pad="", pad_width=-1,
                                         preserve_short_sequences=True)]
        return [grams.flat_values, grams.row_splits, short.flat_values, short.row_splits,
                tf.strings.ngrams(dense, 2), *(t for op in empty for t in op)]

    check(build)


def _fails_like_tf(build, feeds, match):
    """TF raises InvalidArgumentError running `build(tf)`; jaxmeta a GraphError matching `match`."""
    tf = get_tf()
    with pytest.raises(tf.errors.InvalidArgumentError):
        check(build, feeds)
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    names = [t.name for t in (outs if isinstance(outs, (list, tuple)) else [outs])]
    with pytest.raises(jaxmeta.GraphError, match=match):
        jaxmeta.import_meta_graph(meta).function(names, feeds=list(feeds))({}, *feeds.values())


def _decode_strict(tf):
    return list(tf.raw_ops.UnicodeDecodeWithOffsets(input=fed(tf, [b""]), input_encoding="UTF-8", errors="strict"))


def _transcode_strict_controls(tf):
    return tf.raw_ops.UnicodeTranscode(input=fed(tf, [b""]), input_encoding="UTF-8", output_encoding="UTF-8",
                                       errors="strict", replace_control_characters=True)


def _encode(tf, errors="strict"):
    v = tf.compat.v1.placeholder(tf.int32, [None], name="v")
    splits = tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    return tf.raw_ops.UnicodeEncode(input_values=v, input_splits=splits, output_encoding="UTF-8", errors=errors)


def _ngrams(tf, widths=(2,), pad_width=0, preserve=False):
    data, splits = fed(tf, ["a", "b", "c"], "w"), tf.compat.v1.placeholder(tf.int64, [None], name="splits")
    return list(tf.raw_ops.StringNGrams(data=data, data_splits=splits, separator=" ", ngram_widths=list(widths),
                                        left_pad="", right_pad="", pad_width=pad_width,
                                        preserve_short_sequences=preserve))


WORDS3 = np.array([b"a", b"b", b"c"], object)


@pytest.mark.parametrize("build, feeds, match", [
    (_decode_strict, {"s:0": np.array([b"ok\xe2\x82"], object)}, "invalid formatting in input string 0"),
    (_transcode_strict_controls, {"s:0": np.array([b"tab\t"], object)}, "under errors='strict'"),
    (_encode, {"v:0": np.array([0x61, 0xD800], np.int32), "splits:0": np.array([0, 2])}, "code point 55296"),
    (_encode, {"v:0": np.array([0x61, -1], np.int32), "splits:0": np.array([0, 2])}, "code point -1"),
    (lambda tf: _encode(tf, "replace"), {"v:0": np.array([1, 2], np.int32), "splits:0": np.array([1, 2])},
     "input_splits must start at 0"),
    (lambda tf: _encode(tf, "replace"), {"v:0": np.array([1, 2], np.int32), "splits:0": np.array([0, 2, 1, 2])},
     "never decrease"),
    (lambda tf: _encode(tf, "replace"), {"v:0": np.array([1], np.int32), "splits:0": np.zeros(0, np.int64)},
     "not empty"),
    (_ngrams, {"w:0": WORDS3, "splits:0": np.array([0, 2])}, "data_splits must start at 0"),
    (_ngrams, {"w:0": WORDS3, "splits:0": np.array([0, 4, 3])}, "never decrease"),
    (lambda tf: _ngrams(tf, (), -1, True), {"w:0": WORDS3, "splits:0": np.array([0, 0, 3])}, "pad_width must be >= 0"),
])
def test_errors_like_tf(build, feeds, match):
    _fails_like_tf(build, feeds, match)


def test_decode_strict_accepts_control_characters():
    def build(tf):
        s = fed(tf, [b"", b""])
        return [*tf.raw_ops.UnicodeDecodeWithOffsets(input=s, input_encoding="UTF-8", errors="strict",
                                                     replace_control_characters=True),
                tf.raw_ops.UnicodeTranscode(input=s, input_encoding="UTF-8", output_encoding="UTF-16-BE",
                                            errors="strict")]

    check(build, {"s:0": np.array([b"a\tb\0", "😀".encode()], object)})


def _meta(build):
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        return tf.compat.v1.train.export_meta_graph(graph=g), [t.name for t in outs]


def test_unsupported_encoding_is_a_clear_error():
    meta, names = _meta(lambda tf: list(tf.raw_ops.UnicodeDecode(input=tf.constant(["a"]),
                                                                 input_encoding="windows-1252")))
    with pytest.raises(jaxmeta.GraphError, match="input_encoding 'windows-1252' is not supported"):
        jaxmeta.import_meta_graph(meta).function(names)({})


def test_hostile_ngram_width_is_refused():
    meta, names = _meta(lambda tf: list(tf.raw_ops.StringNGrams(
        data=tf.constant(["a"]), data_splits=tf.constant([0, 1], tf.int64), separator=" ",
        ngram_widths=[2**31 - 1], left_pad="<", right_pad=">", pad_width=-1, preserve_short_sequences=False)))
    with pytest.raises(jaxmeta.GraphError, match="more than jaxmeta's limit"):
        jaxmeta.import_meta_graph(meta).function(names)({})
