"""Convert llama2.c checkpoints and tokenizers to transformers.

llama2.c (github.com/karpathy/llama2.c) stores a Llama-2-architecture model as a flat float32 file and its
SentencePiece BPE vocabulary as a flat list of (score, bytes). `convert_llama2c` turns such a pair into a directory
that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load: a `LlamaForCausalLM` in
safetensors and a fast (`tokenizers`) BPE tokenizer that encodes exactly like llama2.c's `encode` in run.c.

`convert_llama2c_cached` converts once into the user cache (a `stackrlhf.cache` entry: shared by concurrent processes,
checked before each use); `stackrlhf.models.bundled` uses it for the bundled tiny model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stackrlhf.cache import check_model, ensure_entry, read_json
from stackrlhf.errors import ConfigError
from stackrlhf.manifest import file_sha256
from stackrlhf.models.bundled import cache_root

CONVERTER_VERSION = 1
"""Bumped whenever the converter's output changes, so cached conversions are rebuilt."""

PROVENANCE_FILE = "llama2c_conversion.json"
"""Written into every converted directory: the source files' paths and sha256, and the converter version."""

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# llama2.c's own vocabulary layout (SentencePiece's): <unk>, BOS, EOS, then 256 byte-fallback tokens.
_SPECIAL_PIECES = {UNK_ID: ("<unk>",), BOS_ID: ("\n<s>\n", "<s>"), EOS_ID: ("\n</s>\n", "</s>")}
_FIRST_BYTE_ID = 3
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

_MAGIC = 0x616B3432  # "ak42": version-1+ checkpoints start with it, legacy (version 0) ones with `dim`.
_V0_HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
_V1_HEADER = struct.Struct("<Ii7iB")  # magic, version, the 7 ints above, shared_classifier; padded to 256 bytes
_V1_HEADER_BYTES = 256
_RMS_NORM_EPS = 1e-5  # llama2.c's rmsnorm
_ROPE_THETA = 10000.0  # llama2.c's precompute_freqs_cis


@dataclass(frozen=True)
class Llama2cHeader:
    """The hyperparameters stored in a llama2.c checkpoint header.

    Attributes:
        dim: model width (hidden size).
        hidden_dim: feed-forward width (intermediate size).
        n_layers: transformer blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (grouped-query attention when fewer than `n_heads`).
        vocab_size: tokens in the vocabulary (always positive here).
        seq_len: longest sequence the model was trained on (max position embeddings).
        shared_classifier: the output projection reuses the token embedding matrix.
        version: file format, 0 (legacy, no magic) or 1 ("ak42" magic, 256-byte header).
    """

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    version: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def header_bytes(self) -> int:
        return _V0_HEADER.size if self.version == 0 else _V1_HEADER_BYTES

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """The float32 tensors after the header, in file order, as (llama2.c name, shape).

        Per-layer weights are stacked along a leading `n_layers` axis; matrices are (out_features, in_features).
        """
        n, d, h, v = self.n_layers, self.dim, self.hidden_dim, self.vocab_size
        kv = self.n_kv_heads * self.head_dim
        embedding = ("tok_embeddings", (v, d))
        attention_norm, ffn_norm, final_norm = ("attention_norm", (n, d)), ("ffn_norm", (n, d)), ("norm", (d,))
        attention = [("wq", (n, d, d)), ("wk", (n, kv, d)), ("wv", (n, kv, d)), ("wo", (n, d, d))]
        ffn = [("w1", (n, h, d)), ("w2", (n, d, h)), ("w3", (n, h, d))]
        if self.version == 0:
            # Legacy files also store RoPE's cos and sin tables, (seq_len, head_dim / 2) each; they are recomputed.
            rope_table = (self.seq_len, self.head_dim // 2)
            layout = [embedding, attention_norm, *attention, ffn_norm, *ffn, final_norm]
            layout += [("freq_cis_real", rope_table), ("freq_cis_imag", rope_table)]
        else:
            layout = [attention_norm, ffn_norm, final_norm, embedding, *attention, *ffn]
        if not self.shared_classifier:
            layout.append(("output", (v, d)))
        return layout

    def expected_bytes(self) -> int:
        """Exact size in bytes of a well-formed checkpoint with this header."""
        return self.header_bytes + 4 * sum(int(np.prod(shape)) for _, shape in self.layout())


def read_llama2c_header(checkpoint: str | Path) -> Llama2cHeader:
    """Read and check the header of a llama2.c float32 checkpoint (version 0 or 1).

    Raises:
        ConfigError: the file is missing, too short, int8-quantized (version 2), of an unknown version, its
            hyperparameters are inconsistent, or its size does not match what the header describes.
    """
    path = Path(checkpoint)
    what = f"llama2.c checkpoint {path}"
    _check_file(path, what)
    with path.open("rb") as f:
        head = f.read(_V1_HEADER_BYTES)
    if len(head) < _V0_HEADER.size:
        raise ConfigError(f"{what}: only {len(head)} bytes, too short for a header.")
    if struct.unpack_from("<I", head)[0] == _MAGIC:
        if len(head) < _V1_HEADER.size:
            raise ConfigError(f"{what}: only {len(head)} bytes, too short for a version-1 header.")
        _, version, *params, shared = _V1_HEADER.unpack_from(head)
        if version == 2:
            raise ConfigError(
                f"{what}: version 2 (int8 Q8_0 quantized) is not supported; export it with llama2.c's "
                "`export.py --version 1` (float32) instead."
            )
        if version != 1:
            raise ConfigError(f"{what}: unknown format version {version} (supported: 0 and 1).")
        shared = bool(shared)
    else:
        version, params = 0, list(_V0_HEADER.unpack_from(head))
        # The legacy format flags an untied classifier with a negative vocab_size.
        shared, params[5] = params[5] > 0, abs(params[5])
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = params
    header = Llama2cHeader(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len, shared, version)
    description = (
        f"dim={dim}, hidden_dim={hidden_dim}, n_layers={n_layers}, n_heads={n_heads}, n_kv_heads={n_kv_heads}, "
        f"vocab_size={vocab_size}, seq_len={seq_len}"
    )
    if min(params) <= 0 or dim % n_heads or n_heads % n_kv_heads or header.head_dim % 2:
        raise ConfigError(f"{what}: implausible header ({description}); is it a llama2.c float32 checkpoint?")
    size = path.stat().st_size
    if size != header.expected_bytes():
        raise ConfigError(
            f"{what}: {size} bytes, but its version-{version} header ({description}) needs "
            f"{header.expected_bytes()}; the file is truncated or not a llama2.c float32 checkpoint."
        )
    return header


def read_llama2c_checkpoint(checkpoint: str | Path) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Read a llama2.c float32 checkpoint.

    Returns:
        The header and the float32 tensors by llama2.c name and shape (see `Llama2cHeader.layout`); the classifier
        is under "output" only when it is not shared with "tok_embeddings".

    Raises:
        ConfigError: see `read_llama2c_header`.
    """
    header = read_llama2c_header(checkpoint)
    data = np.fromfile(checkpoint, dtype="<f4", offset=header.header_bytes).astype(np.float32, copy=False)
    tensors, start = {}, 0
    for name, shape in header.layout():
        count = int(np.prod(shape))
        tensors[name] = torch.from_numpy(data[start : start + count].reshape(shape))
        start += count
    return header, tensors


def read_llama2c_tokenizer(tokenizer: str | Path) -> list[tuple[bytes, float]]:
    """Read a llama2.c tokenizer file (`tokenizer.bin`, `tok512.bin`).

    Layout: int32 max_token_length, then per token (in id order) a float32 score, an int32 length and that many
    bytes of UTF-8 text; the vocabulary size is implied by the file length.

    Returns:
        (piece bytes, score) per token id.

    Raises:
        ConfigError: the file is missing, empty, truncated, or a piece is longer than max_token_length.
    """
    path = Path(tokenizer)
    what = f"llama2.c tokenizer {path}"
    _check_file(path, what)
    data = path.read_bytes()
    if len(data) < 4:
        raise ConfigError(f"{what}: only {len(data)} bytes, too short for a header.")
    (max_token_length,) = struct.unpack_from("<i", data)
    if max_token_length <= 0:
        raise ConfigError(f"{what}: max_token_length is {max_token_length}; is it a llama2.c tokenizer file?")
    pieces, offset = [], 4
    while offset < len(data):
        if offset + 8 > len(data):
            raise ConfigError(f"{what}: truncated in the header of token {len(pieces)} (byte {offset}).")
        score, length = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not 0 <= length <= max_token_length:
            raise ConfigError(
                f"{what}: token {len(pieces)} has length {length}, outside 0..{max_token_length} (byte {offset - 4})."
            )
        if offset + length > len(data):
            raise ConfigError(f"{what}: truncated in the bytes of token {len(pieces)} (byte {offset}).")
        pieces.append((data[offset : offset + length], score))
        offset += length
    if not pieces:
        raise ConfigError(f"{what}: contains no tokens.")
    return pieces


def build_tokenizer(pieces: list[tuple[bytes, float]], model_max_length: int, source: str) -> PreTrainedTokenizerFast:
    """Build a fast tokenizer that encodes and decodes like llama2.c.

    Encoding: the normalizer prepends "▁" (SentencePiece's dummy prefix, also when the text already starts with a
    space) and turns spaces into "▁"; a BPE model whose merges are ranked by the merged piece's score then reproduces
    llama2.c's greedy best-score merging, with characters outside the vocabulary falling back to `<0xNN>` byte
    tokens. `<s>` (BOS) is prepended, EOS is not appended. Decoding inverts this and drops the dummy-prefix space.

    Args:
        pieces: (piece bytes, score) per token id, as `read_llama2c_tokenizer` returns them.
        model_max_length: longest input in tokens (the model's seq_len).
        source: the tokenizer file, for error messages.

    Raises:
        ConfigError: ids 0/1/2 are not `<unk>`/BOS/EOS, a piece is not UTF-8, or two pieces coincide.
    """
    what = f"llama2.c tokenizer {source}"
    vocab: dict[str, int] = {}
    scores: dict[str, float] = {}
    for token_id, (raw, score) in enumerate(pieces):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{what}: token {token_id} is not valid UTF-8 ({raw!r}).") from err
        if token_id in _SPECIAL_PIECES:
            if text not in _SPECIAL_PIECES[token_id]:
                raise ConfigError(
                    f"{what}: token {token_id} is {text!r}, expected {_SPECIAL_PIECES[token_id][0]!r} "
                    "(llama2.c's <unk>, BOS, EOS layout)."
                )
            piece = _SPECIAL_PIECES[token_id][-1]
        elif _BYTE_PIECE.fullmatch(text):
            piece = f"<0x{int(text[3:5], 16):02X}>"
        elif _FIRST_BYTE_ID <= token_id < _FIRST_BYTE_ID + 256 and text == chr(token_id - _FIRST_BYTE_ID):
            piece = f"<0x{token_id - _FIRST_BYTE_ID:02X}>"  # some exports store the byte itself
        else:
            piece = text.replace(" ", "▁")
            scores[piece] = score
        if piece in vocab:
            raise ConfigError(f"{what}: tokens {vocab[piece]} and {token_id} are both {piece!r}.")
        vocab[piece] = token_id

    # Every split of a mergeable piece into two mergeable pieces is a merge, ranked by the merged piece's score
    # (higher first), as llama2.c merges the adjacent pair whose concatenation scores best.
    merges = sorted(
        (
            (-score, vocab[piece[:cut]], vocab[piece[cut:]], piece[:cut], piece[cut:])
            for piece, score in scores.items()
            for cut in range(1, len(piece))
            if piece[:cut] in scores and piece[cut:] in scores
        )
    )
    backend = Tokenizer(
        BPE(vocab=vocab, merges=[(left, right) for *_, left, right in merges], unk_token="<unk>", byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", BOS_ID)]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_model(header: Llama2cHeader, tensors: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    """Build a float32 `LlamaForCausalLM` holding llama2.c weights.

    llama2.c applies rotary embeddings to interleaved pairs (0,1), (2,3), ... of each head; transformers rotates
    the two halves of each head. The rows of wq (per query head) and wk (per key/value head) are permuted to match;
    all other weights copy as they are.
    """
    config = LlamaConfig(
        vocab_size=header.vocab_size,
        hidden_size=header.dim,
        intermediate_size=header.hidden_dim,
        num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads,
        num_key_value_heads=header.n_kv_heads,
        head_dim=header.head_dim,
        hidden_act="silu",
        max_position_embeddings=header.seq_len,
        rms_norm_eps=_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": _ROPE_THETA},
        tie_word_embeddings=header.shared_classifier,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=UNK_ID,
        dtype="float32",
    )
    state_dict = {
        "model.embed_tokens.weight": tensors["tok_embeddings"],
        "model.norm.weight": tensors["norm"],
        "lm_head.weight": tensors["tok_embeddings" if header.shared_classifier else "output"],
    }
    for i in range(header.n_layers):
        prefix = f"model.layers.{i}."
        state_dict |= {
            prefix + "input_layernorm.weight": tensors["attention_norm"][i],
            prefix + "self_attn.q_proj.weight": _unpermute_rotary(tensors["wq"][i], header.n_heads),
            prefix + "self_attn.k_proj.weight": _unpermute_rotary(tensors["wk"][i], header.n_kv_heads),
            prefix + "self_attn.v_proj.weight": tensors["wv"][i],
            prefix + "self_attn.o_proj.weight": tensors["wo"][i],
            prefix + "post_attention_layernorm.weight": tensors["ffn_norm"][i],
            prefix + "mlp.gate_proj.weight": tensors["w1"][i],
            prefix + "mlp.down_proj.weight": tensors["w2"][i],
            prefix + "mlp.up_proj.weight": tensors["w3"][i],
        }
    model = LlamaForCausalLM(config)
    model.load_state_dict(state_dict, strict=True)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=UNK_ID)
    return model.eval()


def _unpermute_rotary(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * head_dim, dim) projection rows from interleaved rotary pairs to transformers' half split.

    The inverse of the permutation llama2.c's export.py applies to Hugging Face weights.
    """
    rows, cols = weight.shape
    return weight.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def convert_llama2c(checkpoint: str | Path, tokenizer: str | Path, output_dir: str | Path) -> Path:
    """Convert a llama2.c checkpoint and tokenizer into a transformers model directory.

    The directory gets a float32 `LlamaForCausalLM` (safetensors, config, generation config), a fast tokenizer
    (BOS `<s>` = 1, EOS `</s>` = 2, unk and pad `<unk>` = 0, right padding) and `llama2c_conversion.json`. It is
    written into a temporary directory beside `output_dir` and renamed into place, so it is complete or absent; an
    earlier conversion there is first renamed aside, then deleted.

    Args:
        checkpoint: llama2.c float32 checkpoint (`*.bin`, format version 0 or 1).
        tokenizer: llama2.c tokenizer file with the checkpoint's vocabulary (`tokenizer.bin`, `tok512.bin`).
        output_dir: directory to create; an existing one must be empty or hold an earlier conversion (replaced).

    Returns:
        `output_dir` as a Path.

    Raises:
        ConfigError: a missing or malformed input file, vocabularies of different sizes, or an `output_dir` that
            holds something else.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not _is_replaceable(output_dir):
        raise ConfigError(
            f"output_dir {output_dir} exists and is neither empty nor an earlier llama2.c conversion; "
            "choose another directory."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(output_dir, "tmp")
    staging.mkdir()  # unlike tempfile.mkdtemp (mode 0700), this honours the umask the final directory should get
    try:
        write_conversion(staging, str(checkpoint), str(tokenizer))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output_dir.exists():
        old = _sibling(output_dir, "old")
        os.replace(output_dir, old)
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output_dir)
    return output_dir


def convert_llama2c_cached(checkpoint: str | Path, tokenizer: str | Path) -> Path:
    """Convert once into the cache directory and return the converted directory; later calls reuse it.

    The directory is `cache_root() / "llama2c" / f"{checkpoint stem}-{key}"`, where `key` hashes both files and
    `CONVERTER_VERSION`. It is a `stackrlhf.cache` entry: any number of processes may ask for it at once (one
    converts, the others wait), and a broken one (a file missing, truncated or changed, a config, weights or
    tokenizer that does not parse) is rebuilt with a warning.

    Raises:
        ConfigError: see `convert_llama2c`; also a cache directory that cannot be created.
    """
    checkpoint, tokenizer = Path(checkpoint), Path(tokenizer)
    _check_file(checkpoint, f"llama2.c checkpoint {checkpoint}")
    _check_file(tokenizer, f"llama2.c tokenizer {tokenizer}")
    key = hashlib.sha256(
        f"{CONVERTER_VERSION}:{file_sha256(checkpoint)}:{file_sha256(tokenizer)}".encode()
    ).hexdigest()
    target = cache_root() / "llama2c" / f"{checkpoint.stem}-{key[:12]}"
    return ensure_entry(
        target,
        write_conversion,
        str(checkpoint.resolve()),
        str(tokenizer.resolve()),
        check=check_conversion,
        what=f"conversion of {checkpoint.name}",
    )


def check_conversion(directory: Path) -> None:
    """Raise `stackrlhf.cache.BrokenEntry` unless `directory` holds a conversion: model, tokenizer, provenance."""
    check_model(directory)
    read_json(directory, PROVENANCE_FILE, "converter_version")


def write_conversion(directory: Path, checkpoint: str, tokenizer: str) -> None:
    """Read and check both inputs, then write their conversion into the existing empty `directory`."""
    checkpoint_path, tokenizer_path = Path(checkpoint), Path(tokenizer)
    header, tensors = read_llama2c_checkpoint(checkpoint_path)
    pieces = read_llama2c_tokenizer(tokenizer_path)
    if len(pieces) != header.vocab_size:
        raise ConfigError(
            f"llama2.c tokenizer {tokenizer}: {len(pieces)} tokens, but checkpoint {checkpoint} has vocab_size "
            f"{header.vocab_size}; pass the tokenizer the model was trained with."
        )
    hf_tokenizer = build_tokenizer(pieces, header.seq_len, tokenizer)
    model = build_model(header, tensors)
    model.save_pretrained(directory)
    hf_tokenizer.save_pretrained(directory)
    provenance = {
        "converter_version": CONVERTER_VERSION,
        "format_version": header.version,
        "checkpoint": str(checkpoint_path.resolve()),
        "checkpoint_sha256": file_sha256(checkpoint_path),
        "tokenizer": str(tokenizer_path.resolve()),
        "tokenizer_sha256": file_sha256(tokenizer_path),
    }
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def _sibling(target: Path, tag: str) -> Path:
    """A unique hidden path beside `target` (same filesystem, so renaming between them is atomic)."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _is_replaceable(directory: Path) -> bool:
    """True for an empty directory or an earlier conversion (it holds `PROVENANCE_FILE`)."""
    return directory.is_dir() and (not any(directory.iterdir()) or (directory / PROVENANCE_FILE).is_file())


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ConfigError(f"{what}: file not found.")
    if not path.is_file():
        raise ConfigError(f"{what}: not a regular file.")
