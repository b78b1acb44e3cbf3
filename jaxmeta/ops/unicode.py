"""Unicode string ops, on the host: `tf.strings.unicode_decode` and `unicode_decode_with_offsets`
(`UnicodeDecode`, `UnicodeDecodeWithOffsets`), `unicode_encode`, `unicode_transcode` and
`tf.strings.ngrams` (`StringNGrams`).

Like the other string ops (`ops/strings.py`), these compute with NumPy when their inputs are known:
on constants they fold, and on fed strings they run when the function runs without `jax.jit`.

TF decodes with ICU's converters; jaxmeta decodes as they do, for the encodings it knows (UTF-8,
UTF-16 and UTF-32 of either byte order, US-ASCII and ISO-8859-1, by ICU's names and aliases).
Each maximal invalid subsequence (the longest start of a valid character, else one byte or unit;
a truncated character at the end) is one error: `errors="replace"` gives one `replacement_char`
for it, `"ignore"` drops it, `"strict"` fails. Code points decode as Unicode scalar values only
(no surrogates, nothing above U+10FFFF). `replace_control_characters` replaces (or drops) C0
controls (U+0000..U+001F) too; under `"strict"` only `UnicodeTranscode` fails on them, as in TF.
`UnicodeEncode` takes Unicode scalar values; others are errors. A surrogate `replacement_char` is
written as ICU writes it: U+FFFD in UTF-8, itself in UTF-16 and UTF-32.
"""

from __future__ import annotations

import codecs
import dataclasses

import numpy as np

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import register
from jaxmeta.ops.strings import _bytes_array, _limit, host

#: ICU's names and aliases of the input encodings jaxmeta decodes, as ICU compares them (see `_icu_key`).
_ALIASES = {
    "UTF-8": ("utf8", "cp1208", "ibm1208", "windows65001", "unicode11utf8", "unicode20utf8"),
    "UTF-16BE": ("utf16be", "xutf16be", "utf16bigendian", "unicodebigunmarked"),
    "UTF-16LE": ("utf16le", "xutf16le", "utf16littleendian", "unicodelittleunmarked"),
    "UTF-32BE": ("utf32be", "utf32bigendian"),
    "UTF-32LE": ("utf32le", "utf32littleendian"),
    "US-ASCII": ("usascii", "ascii", "ansix341968", "ansix341986", "iso646us", "us", "csascii", "isoir6", "cp367",
                 "ibm367", "646"),
    "ISO-8859-1": ("iso88591", "latin1", "l1", "ibm819", "cp819", "csisolatin1", "isoir100", "88591", "iso885911987"),
}
_INPUT_ENCODINGS = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}

#: TF's output encodings (its `ParseUnicodeEncoding`: exactly these names).
_OUTPUT_ENCODINGS = ("UTF-8", "UTF-16-BE", "UTF-32-BE")

_MAX_CODE_POINT = 0x10FFFF


def _icu_key(name: str) -> str:
    """`name` as ICU compares converter names: letters lowercased, digits kept, all else dropped, and
    a zero dropped where it leads a number (not after a digit) and another digit follows."""
    out, after_digit = [], False
    for i, c in enumerate(name):
        if not (c.isascii() and c.isalnum()):
            after_digit = False
            continue
        if c == "0":
            if not after_digit and name[i + 1:i + 2].isdigit() and name[i + 1:i + 2].isascii():
                continue
        else:
            after_digit = c.isdigit()
        out.append(c.lower())
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class _Errors:
    """The `errors`, `replacement_char` and `replace_control_characters` attributes."""

    strict: bool
    ignore: bool
    replacement: int
    controls: bool


def _error_options(node) -> _Errors:
    policy = node.attr_str("errors", "replace")
    if policy not in ("strict", "replace", "ignore"):
        raise GraphError(f"node {node.name!r} ({node.type}): errors must be 'strict', 'replace' or 'ignore', "
                         f"got {policy!r}")
    replacement = node.attr_int("replacement_char", 0xFFFD)
    if not 0 <= replacement <= _MAX_CODE_POINT:
        raise GraphError(f"node {node.name!r} ({node.type}): replacement_char {replacement} is not a Unicode code "
                         f"point (0..{_MAX_CODE_POINT})")
    controls = node.attr_bool("replace_control_characters", False)  # UnicodeEncode has none
    return _Errors(policy == "strict", policy == "ignore", replacement, controls)


def _input_encoding(node) -> str:
    name = node.attr_str("input_encoding")
    encoding = _INPUT_ENCODINGS.get(_icu_key(name))
    if encoding is None:
        raise GraphError(f"node {node.name!r} ({node.type}): input_encoding {name!r} is not supported: jaxmeta "
                         f"decodes {', '.join(_ALIASES)} (and ICU's aliases of them), as TF's ICU converters do; "
                         "transcode the strings to UTF-8 before the graph")
    return encoding


def _output_encoding(node) -> str:
    name = node.attr_str("output_encoding")
    if name not in _OUTPUT_ENCODINGS:
        raise GraphError(f"node {node.name!r} ({node.type}): output_encoding must be one of "
                         f"{', '.join(_OUTPUT_ENCODINGS)}, got {name!r}")
    return name


# -- decoding: (code points, bytes each, invalid each) per string, as ICU's converters read them ----


def _chars(codes, sizes, bad=None):
    codes = np.asarray(codes, np.int64)
    return codes, np.asarray(sizes, np.int64), np.zeros(codes.shape, bool) if bad is None else np.asarray(bad)


def _invalid(nbytes: int):
    return _chars([0xFFFD], [nbytes], [True])


def _concat(parts):
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _text(text: str, encoding: str = "UTF-8"):
    """The characters of valid text, with their lengths in `encoding`."""
    codes = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.int64)
    if encoding == "UTF-8":
        sizes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    elif encoding.startswith("UTF-16"):
        sizes = 2 + 2 * (codes >= 0x10000)
    else:
        sizes = np.full(codes.shape, 4 if encoding.startswith("UTF-32") else 1)
    return _chars(codes, sizes)


def _decode_utf8(s: bytes):
    try:
        return _text(s.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    # Python's decoder reports each maximal invalid subsequence as one error, as ICU's does.
    view, pos, parts = memoryview(s), 0, []
    while True:
        try:
            parts.append(_text(codecs.utf_8_decode(view[pos:], "strict", True)[0]))
            return _concat(parts)
        except UnicodeDecodeError as e:
            parts.append(_text(codecs.utf_8_decode(view[pos:pos + e.start], "strict", True)[0]))
            parts.append(_invalid(e.end - e.start))
            pos += e.end


def _decode_utf16(s: bytes, order: str):
    units = np.frombuffer(s, order + "u2", count=len(s) // 2).astype(np.int64)
    high, low = (units >= 0xD800) & (units < 0xDC00), (units >= 0xDC00) & (units < 0xE000)
    pair = np.zeros(units.shape, bool)
    pair[:-1] = high[:-1] & low[1:]
    second = np.zeros(units.shape, bool)
    second[1:] = pair[:-1]
    following = np.append(units[1:], 0xDC00)
    codes = np.where(pair, 0x10000 + ((units - 0xD800) << 10) + following - 0xDC00, units)
    start = ~second
    codes, sizes, bad = codes[start], np.where(pair, 4, 2)[start], ((high & ~pair) | (low & ~second))[start]
    if len(s) % 2:
        if units.size and high[-1]:  # a lead surrogate with less than a trail after it: one truncated character
            sizes[-1] += 1
        else:
            return _concat([(codes, sizes, bad), _invalid(1)])
    return codes, sizes, bad


def _decode_utf32(s: bytes, order: str):
    codes = np.frombuffer(s, order + "u4", count=len(s) // 4).astype(np.int64)
    chars = _chars(codes, np.full(codes.shape, 4), (codes > _MAX_CODE_POINT) | ((codes >= 0xD800) & (codes < 0xE000)))
    return _concat([chars, _invalid(len(s) % 4)]) if len(s) % 4 else chars


def _decode_bytes(s: bytes, ascii_only: bool):
    codes = np.frombuffer(s, np.uint8).astype(np.int64)
    return _chars(codes, np.ones(codes.shape, np.int64), codes >= 0x80 if ascii_only else None)


_DECODERS = {
    "UTF-8": _decode_utf8,
    "UTF-16BE": lambda s: _decode_utf16(s, ">"),
    "UTF-16LE": lambda s: _decode_utf16(s, "<"),
    "UTF-32BE": lambda s: _decode_utf32(s, ">"),
    "UTF-32LE": lambda s: _decode_utf32(s, "<"),
    "US-ASCII": lambda s: _decode_bytes(s, True),
    "ISO-8859-1": lambda s: _decode_bytes(s, False),
}


#: Python's codecs of the same encodings: where one decodes a string without error, ICU finds none either.
_PYTHON_CODECS = {"UTF-8": "utf-8", "UTF-16BE": "utf-16-be", "UTF-16LE": "utf-16-le", "UTF-32BE": "utf-32-be",
                  "UTF-32LE": "utf-32-le", "US-ASCII": "ascii", "ISO-8859-1": "latin-1"}


def _decode_each(encoding: str, items: list[bytes]):
    """(code points, bytes each, invalid each) of all strings, with each string's character count."""
    try:  # the common case, all valid: decode the batch at once
        texts = [s.decode(_PYTHON_CODECS[encoding]) for s in items]
    except UnicodeDecodeError:
        pass
    else:
        return (*_text("".join(texts), encoding), np.array([len(t) for t in texts], np.int64))
    parts = [_DECODERS[encoding](s) for s in items]
    counts = np.array([len(codes) for codes, _, _ in parts], np.int64)
    return (*(_concat(parts) if parts else _chars([], [])), counts)


def _decode(node, encoding: str, options: _Errors, items: list[bytes], strict_controls: bool = False):
    """(code points, byte offsets in their strings, characters per string) of all strings under the
    error options.

    `strict_controls`: with `replace_control_characters`, a control character fails a strict op too
    (TF's `UnicodeTranscode` counts it as an error; its decode ops only replace it)."""
    codes, sizes, bad, counts = _decode_each(encoding, items)
    handled = bad | (options.controls & (codes <= 0x1F))
    failed = np.flatnonzero(handled if strict_controls else bad)
    if options.strict and failed.size:
        index = int(np.searchsorted(np.cumsum(counts), failed[0], side="right"))
        raise GraphError(f"node {node.name!r} ({node.type}): invalid formatting in input string {index} "
                         f"({items[index][:40]!r}) under errors='strict'; use errors='replace' or 'ignore' to "
                         "accept it")
    # Each string's characters consume all its bytes: a string's first byte is the bytes before it.
    lengths = np.array([len(s) for s in items], np.int64)
    offsets = np.cumsum(sizes) - sizes - np.repeat(np.cumsum(lengths) - lengths, counts)
    if options.ignore:
        row = np.repeat(np.arange(len(items)), counts)
        return codes[~handled], offsets[~handled], np.bincount(row[~handled], minlength=len(items)).astype(np.int64)
    return np.where(handled, options.replacement, codes), offsets, counts


def _encode(codes: np.ndarray, encoding: str) -> bytes:
    """Code points (Unicode scalar values, or a surrogate `replacement_char`) as TF's ICU writes them:
    a lone surrogate becomes U+FFFD in UTF-8 and stays itself in UTF-16 and UTF-32."""
    if encoding == "UTF-32-BE":
        return codes.astype(">u4").tobytes()
    surrogate = (codes >= 0xD800) & (codes < 0xE000)
    if encoding == "UTF-8":
        return np.where(surrogate, 0xFFFD, codes).astype("<u4").tobytes().decode("utf-32-le").encode("utf-8")
    text = codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
    return text.encode("utf-16-be", "surrogatepass")


def _splits_dtype(node, name: str = "Tsplits") -> np.dtype:
    return np.dtype(node.attr_dtype(name, np.dtype(np.int64)))


@register("UnicodeDecode", "UnicodeDecodeWithOffsets")
def _unicode_decode(node):
    encoding, options = _input_encoding(node), _error_options(node)
    dtype, offsets_too = _splits_dtype(node), node.type == "UnicodeDecodeWithOffsets"

    def fn(x):
        (x,) = host(node, x)
        codes, offsets, counts = _decode(node, encoding, options, x.reshape(-1).tolist())
        splits = np.concatenate([[0], np.cumsum(counts)]).astype(dtype)
        # char_to_byte_starts is int64 whatever Tsplits is, as the op declares it (TF's kernel aborts
        # on Tsplits=int32 there)
        return [splits, codes.astype(np.int32), offsets] if offsets_too else [splits, codes.astype(np.int32)]

    return fn


@register("UnicodeTranscode")
def _unicode_transcode(node):
    encoding, options = _input_encoding(node), _error_options(node)
    output = _output_encoding(node)

    def fn(x):
        (x,) = host(node, x)
        items = x.reshape(-1).tolist()
        _limit(node, 4 * sum(map(len, items)))  # at most 4 bytes out (UTF-32) per byte in
        codes, _, counts = _decode(node, encoding, options, items, strict_controls=True)
        ends = np.cumsum(counts).tolist()
        return _bytes_array([_encode(codes[a:b], output) for a, b in zip([0, *ends[:-1]], ends)], x.shape)

    return fn


@register("UnicodeEncode")
def _unicode_encode(node):
    encoding, options = _output_encoding(node), _error_options(node)

    def fn(values, splits):
        values, splits = host(node, values, splits)
        _check_encode_inputs(node, values, splits)
        values = values.astype(np.int64)
        valid = (values >= 0) & (values <= _MAX_CODE_POINT) & ~((values >= 0xD800) & (values < 0xE000))
        if options.strict and not valid.all():
            bad = int(values[~valid][0])
            raise GraphError(f"node {node.name!r} (UnicodeEncode): code point {bad} is not a Unicode scalar value "
                             "(0..0x10FFFF, no surrogates) under errors='strict'")
        values = values[valid] if options.ignore else np.where(valid, values, options.replacement)
        ends = np.concatenate([[0], np.cumsum(valid)])[splits[1:]] if options.ignore else splits[1:]
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        _limit(node, 4 * values.size)
        return _bytes_array([_encode(values[a:b], encoding) for a, b in zip(starts.tolist(), ends.tolist())],
                            (len(ends),))

    return fn


def _check_encode_inputs(node, values: np.ndarray, splits: np.ndarray) -> None:
    if values.ndim != 1 or splits.ndim != 1 or splits.size == 0:
        raise GraphError(f"node {node.name!r} (UnicodeEncode): input_values and input_splits must be vectors, "
                         f"input_splits not empty; got shapes {values.shape} and {splits.shape}")
    if splits[0] != 0 or splits[-1] != values.size or np.any(np.diff(splits) < 0):
        raise GraphError(f"node {node.name!r} (UnicodeEncode): input_splits must start at 0, never decrease and "
                         f"end at the {values.size} input_values; got {splits.tolist()[:20]}")


# -- StringNGrams ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _NGrams:
    """StringNGrams' attributes."""

    separator: bytes
    left_pad: bytes
    right_pad: bytes
    widths: tuple[int, ...]
    pad_width: int
    preserve_short: bool

    def pad(self, width: int) -> int:
        """The pads on each side for `width`: `pad_width`, or width - 1 when negative; at most width - 1."""
        return min(width - 1 if self.pad_width < 0 else self.pad_width, width - 1)


def _ngram_options(node) -> _NGrams:
    widths = tuple(node.attr_ints("ngram_widths"))
    pad_width = node.attr_int("pad_width", -1)
    if any(not 0 < w < 1 << 31 for w in widths) or not -(1 << 31) <= pad_width < 1 << 31:
        raise GraphError(f"node {node.name!r} (StringNGrams): ngram_widths must be positive 32-bit integers and "
                         f"pad_width one, got {list(widths)} and {pad_width}")
    return _NGrams(node.attr_bytes("separator"), node.attr_bytes("left_pad"), node.attr_bytes("right_pad"), widths,
                   pad_width, node.attr_bool("preserve_short_sequences", False))


def _preserved(options: _NGrams, lengths: np.ndarray) -> np.ndarray:
    """Which rows get one ngram of the whole row (padded): non-empty rows too short for any width."""
    if not options.preserve_short:
        return np.zeros(lengths.shape, bool)
    made = np.zeros(lengths.shape, np.int64)
    for w in options.widths:
        p = options.pad(w)
        made += np.maximum(0, lengths + 2 * p - w + 1)
    return (lengths > 0) & (made == 0)


def _ngrams_cost(options: _NGrams, tokens: list[bytes], splits: np.ndarray, preserved: np.ndarray) -> float:
    """The bytes of all ngrams, plus one per ngram and per pad: what StringNGrams would allocate,
    counted without making it (a hostile width or pad_width asks for billions)."""
    lengths = np.diff(splits).astype(np.float64)
    token_bytes = np.array([len(t) for t in tokens], np.float64)
    row = np.repeat(np.arange(lengths.size), np.diff(splits))
    position = np.arange(len(tokens)) - splits[row]
    pads = len(options.left_pad) + len(options.right_pad)
    cost = 0.0
    for w in options.widths:
        p = options.pad(w)
        n = np.maximum(0.0, lengths + 2 * p - w + 1)
        m = np.minimum(p, n)
        side = m * p - m * (m - 1) / 2  # pads on one side, summed over the row's ngrams
        cost += float(np.sum(n * (1 + (w - 1) * len(options.separator)) + side * (2 + pads)))
        q = position + p  # a token's place in the padded row; the ngrams that hold it start in [q - w + 1, q]
        held = np.clip(np.minimum(n[row] - 1, q) - np.maximum(0, q - w + 1) + 1, 0, None)
        cost += float(np.sum(held * token_bytes))
    short = lengths[preserved]
    p = max(options.pad_width, 0)
    cost += float(np.sum(1 + 2 * p * (1 + pads / 2) + (short + 2 * p - 1) * len(options.separator)))
    return cost + float(np.sum(token_bytes[preserved[row]]))


def _ngrams(options: _NGrams, row: list[bytes], width: int, pad: int) -> list[bytes]:
    """The ngrams of `width` over the row padded with `pad` pads each side, built as TF builds them
    (without the padded row: pad_width may be huge where few ngrams come of it)."""
    count = len(row) + 2 * pad - width + 1
    out = []
    for i in range(count):
        left, right = max(0, pad - i), max(0, pad - (count - 1 - i))
        start = max(0, i - pad)
        out.append(_ngram(options, left, row[start:start + width - left - right], right))
    return out


def _ngram(options: _NGrams, left: int, tokens: list[bytes], right: int) -> bytes:
    sep = options.separator
    head = (options.left_pad + sep) * left
    if tokens:
        return head + sep.join(tokens) + (sep + options.right_pad) * right
    return head + (options.right_pad + sep) * (right - 1) + options.right_pad


@register("StringNGrams")
def _string_ngrams(node):
    options, dtype = _ngram_options(node), _splits_dtype(node)

    def fn(data, data_splits):
        data, splits = host(node, data, data_splits)
        tokens, flat = data.reshape(-1).tolist(), splits.reshape(-1).astype(np.int64)
        _check_ngram_splits(node, flat, len(tokens))
        if not tokens or not flat.size:  # TF's early return: empty strings in the data's shape
            return [_bytes_array([b""] * data.size, data.shape), np.zeros(splits.shape, dtype)]
        preserved = _preserved(options, np.diff(flat))
        if preserved.any() and options.pad_width < 0:
            raise GraphError(f"node {node.name!r} (StringNGrams): pad_width must be >= 0 when "
                             "preserve_short_sequences is set and a row is shorter than every ngram width "
                             f"(got pad_width {options.pad_width})")
        _limit(node, int(_ngrams_cost(options, tokens, flat, preserved)))
        out, counts = [], []
        for (a, b), short in zip(zip(flat[:-1].tolist(), flat[1:].tolist()), preserved.tolist()):
            row = tokens[a:b]
            grams = [g for w in options.widths for g in _ngrams(options, row, w, options.pad(w))]
            if short:
                grams = _ngrams(options, row, len(row) + 2 * options.pad_width, options.pad_width)
            out.extend(grams)
            counts.append(len(grams))
        ngram_splits = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(dtype)
        return [_bytes_array(out, (len(out),)), ngram_splits.reshape(splits.shape)]

    return fn


def _check_ngram_splits(node, splits: np.ndarray, size: int) -> None:
    if splits.size and (splits[0] != 0 or splits[-1] != size or np.any(np.diff(splits) < 0) or np.any(splits > size)):
        raise GraphError(f"node {node.name!r} (StringNGrams): data_splits must start at 0, never decrease and end "
                         f"at the {size} data elements; got {splits.tolist()[:20]}")

