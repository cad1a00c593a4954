"""The llama2.c converter on the bundled stories260K model: generation, tokenization, caching (once, checked, shared
by concurrent processes), bad inputs, recipe."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from stackrlhf.cache import MANIFEST_FILE, entry_problem
from stackrlhf.errors import ConfigError
from stackrlhf.manifest import write_manifest
from stackrlhf.models import llama2c
from stackrlhf.models.bundled import (
    BUNDLED_CHECKPOINT,
    BUNDLED_TOKENIZER,
    TINY_MODEL,
    cache_root,
    resolve_model_name_or_path,
    tiny_model_path,
)
from stackrlhf.models.llama2c import build_model, convert_llama2c, read_llama2c_checkpoint
from stackrlhf.recipes.convert_llama2c import ConvertLlama2cArguments, main, make_parser
from stackrlhf.recipes.runner import parse_args

# Documented by the model's author (karpathy/llama2.c README) for greedy decoding from BOS.
KNOWN_STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

SAMPLES = [
    "Once upon a time, there was a little girl named Lily.",
    ' She said, "Let\'s play with the big red ball!"',  # a leading space keeps llama2.c's dummy prefix too
    "Café naïve — 日本 😀",  # é and — are in the vocabulary; ï, 日, 本 and 😀 fall back to bytes
    "Tom and Sue\nran  fast.",  # newline (byte fallback) and a double space
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's real cache directory."""
    monkeypatch.setenv("STACKRLHF_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_llama2c(BUNDLED_CHECKPOINT, BUNDLED_TOKENIZER, tmp_path_factory.mktemp("converted") / "stories")


@pytest.fixture(scope="module")
def tokenizer(converted: Path):
    return AutoTokenizer.from_pretrained(converted)


def _llama2c_vocab(path: Path) -> tuple[list[str], list[float]]:
    """llama2.c's pieces (as stored: spaces, not "▁") and scores, read independently of the converter."""
    data = path.read_bytes()
    pieces, scores, offset = [], [], 4
    while offset < len(data):
        score, length = struct.unpack_from("<fi", data, offset)
        pieces.append(data[offset + 8 : offset + 8 + length].decode("utf-8"))
        scores.append(score)
        offset += 8 + length
    return pieces, scores


def _llama2c_encode(text: str, pieces: list[str], scores: list[float]) -> list[int]:
    """llama2.c's `encode` (run.c), without BOS/EOS: dummy-prefix space, UTF-8 byte fallback, then repeatedly merge
    the adjacent pair whose concatenation is the best-scoring piece (the leftmost such pair on ties)."""
    index = {piece: i for i, piece in enumerate(pieces)}
    tokens = [index[" "]] if text else []
    for char in text:
        tokens += [index[char]] if char in index else [byte + 3 for byte in char.encode("utf-8")]
    while True:
        best = None
        for i in range(len(tokens) - 1):
            merged = index.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if merged is not None and (best is None or scores[merged] > scores[best[0]]):
                best = (merged, i)
        if best is None:
            return tokens
        merged, i = best
        tokens[i : i + 2] = [merged]


def test_greedy_generation_tells_the_documented_story(converted: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert model.config.tie_word_embeddings and model.config.max_position_embeddings == 512
    assert (model.generation_config.bos_token_id, model.generation_config.eos_token_id) == (1, 2)
    assert model.generation_config.pad_token_id == 0
    input_ids = torch.tensor([[1]])
    with torch.no_grad():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=60
        )
    assert tokenizer.decode(output[0], skip_special_tokens=True).startswith(KNOWN_STORY)


@pytest.mark.parametrize("text", SAMPLES)
def test_tokenizer_encodes_like_llama2c(tokenizer, text: str) -> None:
    reference = _llama2c_encode(text, *_llama2c_vocab(BUNDLED_TOKENIZER))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == reference
    ids = tokenizer(text)["input_ids"]
    assert ids == [tokenizer.bos_token_id, *reference]  # BOS prepended, no EOS appended
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_byte_fallback_and_empty_text(tokenizer) -> None:
    byte_ids = [i for i in tokenizer(SAMPLES[2], add_special_tokens=False)["input_ids"] if 3 <= i <= 258]
    assert tokenizer.convert_ids_to_tokens(byte_ids[:3]) == ["<0xC3>", "<0xAF>", "<0xE6>"]  # ï, then 日
    assert tokenizer("")["input_ids"] == [1]
    assert tokenizer.decode([1], skip_special_tokens=True) == ""


def test_tokenizer_matches_llama2c_on_random_text(tokenizer) -> None:
    pieces, scores = _llama2c_vocab(BUNDLED_TOKENIZER)
    words = [p for p in pieces[259:] if p.strip()]
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(words + [" ", "  ", "\n", "ü", "ß"]) for _ in range(rng.randint(1, 12)))
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == _llama2c_encode(text, pieces, scores), text


def test_tokenizer_special_tokens_and_padding(tokenizer) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.padding_side) == ("<unk>", 0, "right")
    assert tokenizer.model_max_length == 512
    batch = tokenizer(["Lily", "Lily and Tim"], padding=True)["input_ids"]
    assert batch[0][-1] == 0 and 2 not in batch[0] and 2 not in batch[1]


def test_tiny_model_path_converts_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real_write = llama2c.write_conversion
    monkeypatch.setattr(llama2c, "write_conversion", lambda *args: builds.append(args) or real_write(*args))

    first = tiny_model_path()
    assert first.parent == tmp_path / "cache" / "llama2c" and first.name.startswith("stories260K-")
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path() == first and len(builds) == 1
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert resolve_model_name_or_path(TINY_MODEL) == str(first)
    assert resolve_model_name_or_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert _entries(first.parent) == [first.name]  # no staging directories left behind
    assert (first / MANIFEST_FILE).is_file()

    monkeypatch.setattr(llama2c, "CONVERTER_VERSION", llama2c.CONVERTER_VERSION + 1)
    rebuilt = tiny_model_path()
    assert rebuilt != first and rebuilt.parent == first.parent and len(builds) == 2


def _entries(directory: Path) -> list[str]:
    """What is in a cache directory, less the lock files beside its entries."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock"))


def _drop_model_type(entry: Path) -> None:
    """A config that parses but says nothing of the architecture, in an entry whose manifest agrees with it."""
    config = json.loads((entry / "config.json").read_text())
    del config["model_type"]
    (entry / "config.json").write_text(json.dumps(config))
    write_manifest(entry, MANIFEST_FILE)


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (lambda entry: (entry / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda entry: (entry / "config.json").write_text("{"), "config.json has 1 bytes"),
        (lambda entry: (entry / MANIFEST_FILE).unlink(), f"no {MANIFEST_FILE}: built by an older stackrlhf"),
        (_drop_model_type, "config.json has no 'model_type'"),
    ],
    ids=["weights deleted", "config truncated", "no manifest", "config without model_type"],
)
def test_broken_cached_conversion_is_rebuilt_with_a_warning(
    corrupt: Callable[[Path], None], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    entry = tiny_model_path()
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger="stackrlhf.cache"):
        assert tiny_model_path() == entry
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(entry) in warning and problem in warning and "rebuilding" in warning
    assert entry_problem(entry, llama2c.check_conversion) is None
    assert AutoModelForCausalLM.from_pretrained(entry).config.model_type == "llama"
    assert _entries(entry.parent) == [entry.name]


@pytest.mark.subprocess
def test_two_processes_convert_a_cold_cache_once(tmp_path: Path) -> None:
    """torchrun with 2 ranks in a process group: one converts, the other waits; both load the one entry.

    Under a process group transformers saves weights on rank 0 only, so a rank that converted in-process could
    publish a model without weights; the entry is built in a single-process child instead.
    """
    script = tmp_path / "convert.py"
    script.write_text(
        "import torch\n"
        "from accelerate import PartialState\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from stackrlhf.models.bundled import tiny_model_path\n"
        "PartialState()  # as a launched recipe: the process group is up\n"
        "assert torch.distributed.get_world_size() == 2\n"
        "path = tiny_model_path()\n"
        "AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)\n"
        "print(f'rank {torch.distributed.get_rank()}: {path}')\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "STACKRLHF_CACHE": str(cache)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    command += [str(script)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    (entry,) = _entries(cache / "llama2c")
    assert lines == [f"rank {rank}: {cache / 'llama2c' / entry}" for rank in (0, 1)]
    assert entry_problem(cache / "llama2c" / entry, llama2c.check_conversion) is None


def test_cache_root_falls_back_to_xdg_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == tmp_path / "cache"
    monkeypatch.delenv("STACKRLHF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "stackrlhf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "stackrlhf"


@pytest.mark.parametrize("under", ["", "sub"])
def test_cache_root_on_a_file_is_one_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, under: str) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory")
    monkeypatch.setenv("STACKRLHF_CACHE", str(file / under))
    with pytest.raises(ConfigError, match=r"\$STACKRLHF_CACHE") as err:
        tiny_model_path()
    assert f"{file} is not a directory" in str(err.value) and len(str(err.value).splitlines()) == 1


def test_truncated_checkpoint_is_rejected(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(BUNDLED_CHECKPOINT.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="truncated") as err:
        convert_llama2c(truncated, BUNDLED_TOKENIZER, tmp_path / "out")
    assert str(truncated) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "tokenizer.bin"
    with pytest.raises(ConfigError, match="not found") as err:
        convert_llama2c(BUNDLED_CHECKPOINT, missing, tmp_path / "out")
    assert str(missing) in str(err.value)


@pytest.mark.parametrize(
    ("cut", "message"),
    [(110, "truncated in the bytes of token 7"), (4 + 8 + 5 + 8 + 5 + 3, "truncated in the header of token 2")],
)
def test_truncated_tokenizer_is_rejected(tmp_path: Path, cut: int, message: str) -> None:
    bad = tmp_path / "tok.bin"
    bad.write_bytes(BUNDLED_TOKENIZER.read_bytes()[:cut])
    with pytest.raises(ConfigError, match=message) as err:
        convert_llama2c(BUNDLED_CHECKPOINT, bad, tmp_path / "out")
    assert str(bad) in str(err.value)


def test_tokenizer_of_another_vocabulary_is_rejected(tmp_path: Path) -> None:
    data, offset = BUNDLED_TOKENIZER.read_bytes(), 4
    for _ in range(300):  # keep the first 300 of 512 tokens
        offset += 8 + struct.unpack_from("<i", data, offset + 4)[0]
    small = tmp_path / "tok300.bin"
    small.write_bytes(data[:offset])
    with pytest.raises(ConfigError, match="300 tokens, but checkpoint .* has vocab_size 512"):
        convert_llama2c(BUNDLED_CHECKPOINT, small, tmp_path / "out")


def test_quantized_checkpoint_is_rejected(tmp_path: Path) -> None:
    quantized = tmp_path / "q80.bin"
    quantized.write_bytes(struct.pack("<Ii7iBi", 0x616B3432, 2, 64, 172, 5, 8, 4, 512, 512, 1, 64).ljust(256, b"\0"))
    with pytest.raises(ConfigError, match="version 2"):
        read_llama2c_checkpoint(quantized)


def test_foreign_output_dir_is_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="neither empty nor an earlier llama2.c conversion"):
        convert_llama2c(BUNDLED_CHECKPOINT, BUNDLED_TOKENIZER, precious)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(path: Path) -> str:
        raise OSError("No space left on device")

    monkeypatch.setattr(llama2c, "file_sha256", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_llama2c(BUNDLED_CHECKPOINT, BUNDLED_TOKENIZER, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_version1_checkpoint_reads_like_the_legacy_one(tmp_path: Path) -> None:
    header, tensors = read_llama2c_checkpoint(BUNDLED_CHECKPOINT)
    params = (header.dim, header.hidden_dim, header.n_layers, header.n_heads, header.n_kv_heads)
    v1 = tmp_path / "v1.bin"
    with v1.open("wb") as f:  # llama2.c's export.py `version1_export` order
        f.write(struct.pack("<Ii7iB", 0x616B3432, 1, *params, header.vocab_size, header.seq_len, 1).ljust(256, b"\0"))
        for name in ("attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            f.write(tensors[name].numpy().tobytes())
    v1_header, v1_tensors = read_llama2c_checkpoint(v1)
    assert (v1_header.version, v1_header.shared_classifier, v1_header.vocab_size) == (1, True, 512)
    assert set(v1_tensors) == set(tensors) - {"freq_cis_real", "freq_cis_imag"}
    for name, tensor in v1_tensors.items():
        assert torch.equal(tensor, tensors[name]), name


def test_untied_classifier(tmp_path: Path) -> None:
    """A negative vocab_size in a legacy header means the classifier follows the other weights."""
    data = BUNDLED_CHECKPOINT.read_bytes()
    _, tensors = read_llama2c_checkpoint(BUNDLED_CHECKPOINT)
    classifier = tensors["tok_embeddings"] * 0.5
    untied = tmp_path / "untied.bin"
    header = list(struct.unpack_from("<7i", data))
    header[5] = -header[5]
    untied.write_bytes(struct.pack("<7i", *header) + data[28:] + classifier.numpy().tobytes())

    model = build_model(*read_llama2c_checkpoint(untied))
    assert not model.config.tie_word_embeddings
    assert torch.equal(model.lm_head.weight, classifier)
    assert torch.equal(model.model.embed_tokens.weight, tensors["tok_embeddings"])


def test_recipe_converts_and_the_result_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output_dir = tmp_path / "stories260K"
    assert main(ConvertLlama2cArguments(output_dir=str(output_dir))) == output_dir
    printed = capsys.readouterr().out
    assert str(output_dir) in printed and "greedy sample: Once upon a time" in printed
    assert len(printed.splitlines()) == 2
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert model.config.vocab_size == len(tokenizer) == 512
    # Converting again replaces the earlier conversion.
    assert main(ConvertLlama2cArguments(output_dir=str(output_dir))) == output_dir


def test_recipe_parser_standalone_and_as_subcommand() -> None:
    (args,) = parse_args(make_parser(), ["--checkpoint", "m.bin", "--output_dir", "out"])
    assert args == ConvertLlama2cArguments(checkpoint="m.bin", tokenizer=None, output_dir="out")
    subparsers = argparse.ArgumentParser(prog="stackrlhf").add_subparsers(dest="command", parser_class=TrlParser)
    parser = make_parser(subparsers)
    assert subparsers.choices["convert-llama2c"] is parser
    assert parse_args(parser, []) == (ConvertLlama2cArguments(),)
