"""Convert a Hugging Face BERT embedding model to GGUF without torch.

Reproduces what llama.cpp's ``convert_hf_to_gguf.py --outtype f16`` writes for a
sentence-transformers BERT model such as all-MiniLM-L6-v2: the same key/value pairs in the same
order, the same tensors in the same order and types, through the same ``gguf`` writer. The file
is meant for ``llama-server --embeddings --pooling mean``.

Only numpy, ``safetensors.numpy`` and the ``gguf`` package are used. Two parts of the reference
need the ``transformers`` tokenizer; they are done from ``tokenizer.json`` directly:

* the vocabulary, read from the WordPiece model and its added tokens;
* the pre-tokenizer name: the reference hashes the ids of a probe text and, for a BERT
  WordPiece tokenizer, finds ``jina-v2-en``; here the tokenizer is checked to be of that kind.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file

__all__ = ["ConversionError", "convert_bert_to_gguf"]

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
_PRE_TOKENIZER = "jina-v2-en"
# Tensors of the checkpoint that an embedding model does not use (as in the reference).
_UNUSED_TENSORS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_UNUSED_PREFIXES = ("cls.predictions", "cls.seq_relationship")
# 2-D weights the reference keeps in f32 (llama.cpp reads them as f32).
_F32_WEIGHTS = ("position_embd.weight", "token_types.weight")
_POOLING_TYPES = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}


class ConversionError(Exception):
    """The model folder cannot be converted; the message names the file or tensor at fault."""


def convert_bert_to_gguf(model_dir: Path, out_path: Path) -> Path:
    """Convert the BERT model in ``model_dir`` to an f16 GGUF file at ``out_path``.

    The file is written next to ``out_path`` under a temporary name and renamed into place, so
    ``out_path`` is either the complete old file or the complete new one.
    """
    for name in _REQUIRED_FILES:
        if not (model_dir / name).is_file():
            raise ConversionError(f"missing model file {name!r} in {model_dir}")
    config = _read_json(model_dir / "config.json")
    if "BertModel" not in config.get("architectures", []):
        raise ConversionError(
            f"config.json: expected architecture BertModel, got {config.get('architectures')!r}"
        )
    try:
        n_vocab, n_embd = int(config["vocab_size"]), int(config["hidden_size"])
        n_ff, n_block = int(config["intermediate_size"]), int(config["num_hidden_layers"])
        n_ctx, n_head = int(config["max_position_embeddings"]), int(config["num_attention_heads"])
        n_types, norm_eps = int(config.get("type_vocab_size", 1)), float(config["layer_norm_eps"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConversionError(f"config.json: missing or invalid hyperparameter {exc}") from exc

    arch = gguf.MODEL_ARCH.BERT
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    expected = _expected_shapes(n_vocab, n_embd, n_ff, n_block, n_ctx, n_types)
    for name, data in _load_tensors(model_dir / "model.safetensors", arch, n_block, expected):
        if (
            data.ndim == 2
            and name.endswith(".weight")
            and not name.endswith(("_norm.weight", *_F32_WEIGHTS))
        ):
            writer.add_tensor(
                name, data.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16
            )
        else:
            writer.add_tensor(
                name, data.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32
            )

    _add_metadata(writer, model_dir)
    writer.add_block_count(n_block)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(norm_eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    if (pooling := _pooling_type(model_dir)) is not None:
        writer.add_pooling_type(pooling)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, model_dir, n_vocab, n_types)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            writer.write_header_to_file(path=tmp_path)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path


def _read_json(path: Path) -> dict[str, Any]:
    data = _read_json_value(path)
    if not isinstance(data, dict):
        raise ConversionError(f"{path.name}: expected a JSON object")
    return data


def _read_json_value(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path.name}: {exc}") from exc


def _expected_shapes(
    n_vocab: int, n_embd: int, n_ff: int, n_block: int, n_ctx: int, n_types: int
) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, n_embd),
        "position_embd.weight": (n_ctx, n_embd),
        "token_types.weight": (n_types, n_embd),
        "token_embd_norm.weight": (n_embd,),
        "token_embd_norm.bias": (n_embd,),
    }
    per_block = {
        "attn_q": (n_embd, n_embd),
        "attn_k": (n_embd, n_embd),
        "attn_v": (n_embd, n_embd),
        "attn_output": (n_embd, n_embd),
        "attn_output_norm": (n_embd,),
        "ffn_up": (n_ff, n_embd),
        "ffn_down": (n_embd, n_ff),
        "layer_output_norm": (n_embd,),
    }
    for bid in range(n_block):
        for part, shape in per_block.items():
            shapes[f"blk.{bid}.{part}.weight"] = shape
            shapes[f"blk.{bid}.{part}.bias"] = shape[:1]
    return shapes


def _load_tensors(
    path: Path, arch: gguf.MODEL_ARCH, n_block: int, expected: dict[str, tuple[int, ...]]
) -> list[tuple[str, npt.NDArray[Any]]]:
    """The checkpoint's tensors under their GGUF names, in the reference's order (by HF name)."""
    try:
        raw = load_file(str(path))
    except Exception as exc:  # safetensors raises its own and OS errors for a bad file
        raise ConversionError(f"cannot read {path.name}: {exc}") from exc
    name_map = gguf.get_tensor_name_map(arch, n_block)
    tensors: list[tuple[str, npt.NDArray[Any]]] = []
    for hf_name in sorted(raw):
        name = hf_name.removeprefix("bert.")
        if name in _UNUSED_TENSORS or name.startswith(_UNUSED_PREFIXES):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None or gguf_name not in expected:
            raise ConversionError(f"{path.name}: unexpected tensor {hf_name!r}")
        data = raw[hf_name]
        if data.shape != expected[gguf_name]:
            raise ConversionError(
                f"{path.name}: tensor {hf_name!r} has shape {data.shape}, "
                f"expected {expected[gguf_name]}"
            )
        tensors.append((gguf_name, data))
    if missing := sorted(set(expected) - {name for name, _ in tensors}):
        raise ConversionError(f"{path.name}: missing tensors {missing}")
    return tensors


def _add_metadata(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    """general.* keys, from the model card, config.json and folder name, as the reference does."""
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    metadata = gguf.Metadata.load(None, model_dir, None, total)
    if metadata.name is None:
        metadata.name = model_dir.name
    if metadata.size_label is None and total > 0:
        metadata.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(writer)


def _pooling_type(model_dir: Path) -> gguf.PoolingType | None:
    """The pooling of the sentence-transformers pipeline (modules.json), if there is one."""
    if not (model_dir / "modules.json").is_file():
        return None
    modules = _read_json_value(model_dir / "modules.json")
    if not isinstance(modules, list):
        raise ConversionError("modules.json: expected a list of modules")
    path = next(
        (m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), None
    )
    if path is None:
        return None
    pooling = _read_json(model_dir / path / "config.json")
    for key, pooling_type in _POOLING_TYPES.items():
        if pooling.get(key):
            return pooling_type
    raise ConversionError(
        f"{path}/config.json: only mean, cls and last-token pooling are supported"
    )


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int, n_types: int) -> None:
    tokenizer = _read_json(model_dir / "tokenizer.json")
    model = tokenizer.get("model") or {}
    pre = tokenizer.get("pre_tokenizer") or {}
    if model.get("type") != "WordPiece" or pre.get("type") != "BertPreTokenizer":
        raise ConversionError(
            "tokenizer.json: expected a WordPiece model with BertPreTokenizer, "
            f"got {model.get('type')!r} with {pre.get('type')!r}"
        )
    vocab: dict[str, int] = model.get("vocab", {})
    added = {t["content"]: t for t in tokenizer.get("added_tokens", [])}
    by_id = {id_: token for token, id_ in vocab.items()}
    by_id.update({t["id"]: content for content, t in added.items()})
    if max(by_id, default=-1) >= n_vocab:
        raise ConversionError(f"tokenizer.json: token id {max(by_id)} >= vocab_size {n_vocab}")

    tokens: list[str] = []
    toktypes: list[int] = []
    for id_ in range(n_vocab):
        token = by_id.get(id_)
        if token is None:
            tokens.append(f"[PAD{id_}]")
            toktypes.append(gguf.TokenType.UNUSED)
            continue
        if token in added and added[token].get("special"):
            tokens.append(token)  # control tokens keep their text
            toktypes.append(gguf.TokenType.CONTROL)
            continue
        if token in added:  # a user-defined token: its spaces are pre-normalised
            toktypes.append(gguf.TokenType.USER_DEFINED)
            token = token.replace("\u2581", " ")
        else:
            toktypes.append(gguf.TokenType.NORMAL)
        # llama.cpp's WordPiece vocab marks word starts ("\u2581") instead of continuations ("##")
        tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)

    writer.add_token_type_count(n_types)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(_PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    # gguf-py in the llama.cpp tree reads the normalizer in SpecialVocab; the PyPI release does
    # not yet, so the same keys are added here, in the same place, unless already written.
    normalizer = tokenizer.get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer":
        for option in ("lowercase", "strip_accents"):
            key = f"tokenizer.ggml.normalizer.{option}"
            if isinstance(value := normalizer.get(option), bool) and key not in writer.kv_data[0]:
                writer.add_bool(key, value)
