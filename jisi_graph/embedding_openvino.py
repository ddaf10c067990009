"""The OpenVINO runtimes of the embedder: `openvino` (bfloat16) and `openvino-int8`.

A sentence-transformers model made of a transformer and mean pooling is converted once to an
OpenVINO model that pools and normalises itself, and cached under `embedder_cache_dir()`. The
`openvino-int8` runtime quantizes that model once more, statically, to int8 weights and
activations (NNCF, SmoothQuant), calibrated on the fixed synthetic corpus of
`jisi_graph.embedding_corpus`, so every machine quantizes alike; it is cached beside the
conversion and embeds the model answers, while queries, which choose the support set, keep the
bfloat16 model. Both run in bfloat16 where int8 does not apply (where the CPU supports it), texts
tokenised with the model's own `tokenizers` tokenizer, truncated on the left to the window and
batched by token length.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

from jisi_graph.embedding import Embedder, embedder_cache_dir, plain_tokenizer, window_within
from jisi_graph.embedding_corpus import CORPUS_SEED, CORPUS_SIZE, calibration_corpus

OPENVINO_BATCH_SIZE = 8
PAD_MULTIPLE = 16
"""Batches are padded to a multiple of this many tokens: OpenVINO keeps compiled kernels per input
shape, and with every length its own shape the int8 model grew by 1.3 GB over 1,000 calls."""
_CONVERSION_VERSION = 1
_QUANTIZATION_VERSION = 1
_COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT"}


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad token ids to the longest, rounded up to a `multiple` of tokens.

    Returns (input_ids, attention_mask, token_type_ids), int64; padding is masked out.
    """
    longest = max((len(ids) for ids in sequences), default=0)
    width = -(-longest // multiple) * multiple
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    return input_ids, mask, np.zeros_like(input_ids)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of at most `batch_size`, by increasing length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class OpenVINOEmbeddings(Embeddings):
    """A LangChain `Embeddings` running a converted sentence-transformers model with OpenVINO.

    Texts are tokenised with the model's `tokenizers` tokenizer, truncated on the left to the
    window, grouped by token length so that little padding is computed, and embedded in small
    batches; the compiled model does the mean pooling and the normalisation itself. The model is
    compiled for throughput (one inference stream per core or so): a long list of texts keeps
    every stream busy, and calls from several threads each take a free inference request from a
    pool. One inference runs at load time, before any thread can call: OpenVINO's Python binding
    can deadlock when two threads make their first numpy conversion at once.
    """

    def __init__(
        self,
        compiled: Any,
        tokenizer: Any,
        *,
        window: int,
        pad_id: int = 0,
        batch_size: int = OPENVINO_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.compiled = compiled
        self.tokenizer = tokenizer
        self.window = window
        self.pad_id = pad_id
        self.batch_size = batch_size
        self._input_names = [port.get_any_name() for port in compiled.inputs]
        self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.streams):
            self._free.put(slot)
        self.embed_array(["warm-up"])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts, in batches of similar token length."""
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one text."""
        return self.embed_array([text])[0].tolist()

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        batches = length_batches([len(x) for x in ids], self.batch_size)
        inputs = [self._inputs([ids[i] for i in batch]) for batch in batches]
        if len(batches) == 1:
            # the batch holds the texts by token length: put each vector back in its text's place
            out = np.empty_like(part := self._infer_one(inputs[0]))
            out[batches[0]] = part
            return out
        return self._infer_pipelined(batches, inputs, len(texts))

    def _inputs(self, sequences: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        input_ids, mask, types = pad_batch(sequences, self.pad_id, PAD_MULTIPLE)
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}
        return {name: arrays[name] for name in self._input_names}

    def _infer_one(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One batch on a free request from the pool (the caller's thread waits for it)."""
        slot = self._free.get()
        try:
            request = self._requests[slot]
            request.infer(inputs)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        finally:
            self._free.put(slot)

    def _infer_pipelined(
        self, batches: list[list[int]], inputs: list[dict[str, np.ndarray]], count: int
    ) -> np.ndarray:
        """Many batches over the free requests (at least one), each stream busy in turn."""
        slots = [self._free.get()]
        while len(slots) < self.streams:
            try:
                slots.append(self._free.get_nowait())
            except queue.Empty:
                break
        requests = [self._requests[slot] for slot in slots]
        running: list[list[int] | None] = [None] * len(requests)
        out: np.ndarray | None = None

        def collect(k: int) -> None:
            nonlocal out
            batch = running[k]
            if batch is None:
                return
            requests[k].wait()
            part = np.asarray(requests[k].get_output_tensor(0).data, dtype=np.float32)
            if out is None:
                out = np.zeros((count, part.shape[1]), dtype=np.float32)
            out[batch] = part
            running[k] = None

        try:
            for position, batch in enumerate(batches):
                k = position % len(requests)
                collect(k)
                requests[k].start_async(inputs[position])
                running[k] = batch
            for k in range(len(requests)):
                collect(k)
        finally:
            for k, request in enumerate(requests):
                if running[k] is not None:
                    request.wait()
            for slot in slots:
                self._free.put(slot)
        assert out is not None
        return out


def _import_openvino() -> Any:
    """Import openvino with its usage telemetry off (the converter sends it unless opted out)."""
    if "openvino" not in sys.modules:
        # `openvino.tools.ovc` falls back to a no-op stub when this import fails
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError:
        raise ValueError(
            "the openvino embedder runtime needs the `openvino` package "
            "(pip install openvino), or choose --embedder-runtime torch"
        ) from None
    return openvino


def _model_fingerprint(model_path: str, embedder_id: str, ov_version: str) -> str:
    digest = hashlib.sha256(f"{embedder_id}\0{ov_version}\0{_CONVERSION_VERSION}".encode())
    root = Path(model_path)
    if root.is_dir():
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def openvino_embedder(
    model_path: str, embedder_id: str, window: int | None = None, *, int8: bool = False
) -> Embedder:
    """The model converted (once) to OpenVINO and compiled for bfloat16.

    With `int8`, model answers are embedded by the model quantized (once) to int8 instead.
    """
    ov = _import_openvino()
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder_id)
    fingerprint = _model_fingerprint(model_path, embedder_id, ov.__version__)
    cache = embedder_cache_dir() / safe_id / f"openvino-{fingerprint}"
    if not (cache / "meta.json").is_file():
        _convert_to_openvino(ov, model_path, cache)
    meta = json.loads((cache / "meta.json").read_text())
    kept = window_within(window, int(meta["window"]), embedder_id)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=kept, direction="left")
    core = ov.Core()
    pad_id = int(meta["pad_id"])

    def compiled(model_file: Path) -> OpenVINOEmbeddings:
        model = core.compile_model(core.read_model(str(model_file)), "CPU", _COMPILE_CONFIG)
        return OpenVINOEmbeddings(model, tokenizer, window=kept, pad_id=pad_id)

    return Embedder(
        embeddings=compiled(cache / "model.xml"),
        id=embedder_id,
        window=kept,
        tokenizer=plain_tokenizer(tokenizer),
        _dim=int(meta["dim"]),
        runtime="openvino-int8" if int8 else "openvino",
        answer_embeddings=compiled(_quantized(ov, cache, meta)) if int8 else None,
    )


def _quantized(ov: Any, cache: Path, meta: dict[str, Any]) -> Path:
    """The int8 model beside the converted one, quantized on first use."""
    target = cache / f"int8-v{_QUANTIZATION_VERSION}-{CORPUS_SIZE}-{CORPUS_SEED}"
    if not (target / "model.xml").is_file():
        _quantize(ov, cache, target, meta)
    return target / "model.xml"


def _quantize(ov: Any, cache: Path, target: Path, meta: dict[str, Any]) -> None:
    """Quantize `cache/model.xml` to int8 on the synthetic corpus; write it to `target`."""
    try:
        import nncf
    except ImportError:
        raise ValueError(
            "the openvino-int8 embedder runtime needs the `nncf` package to quantize the model "
            "once (pip install nncf), or choose --embedder-runtime openvino"
        ) from None
    from tokenizers import Tokenizer

    nncf.set_log_level(logging.ERROR)
    tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(meta["window"]), direction="left")
    examples = []
    for text in calibration_corpus():
        input_ids, mask, types = pad_batch([tokenizer.encode(text).ids], int(meta["pad_id"]))
        examples.append({"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types})
    model = ov.Core().read_model(str(cache / "model.xml"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize(
            model,
            nncf.Dataset(examples),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(examples),
        )
    with _publishing(target, "model.xml") as staging:
        ov.save_model(quantized, str(staging / "model.xml"), compress_to_fp16=False)


def _convert_to_openvino(ov: Any, model_path: str, cache: Path) -> None:
    """Convert a sentence-transformers model (transformer, mean pooling, normalise) to `cache`."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    kinds = [type(module).__name__ for module in model]
    pooling = model[1].get_config_dict() if len(kinds) > 1 else {}
    if kinds[:2] != ["Transformer", "Pooling"] or not _is_mean_pooling(pooling):
        raise ValueError(
            f"the openvino runtime converts models made of a transformer and mean pooling; "
            f"{model_path} has {kinds} ({pooling}): use --embedder-runtime torch"
        )
    backend = model.tokenizer.backend_tokenizer
    transformer = model[0].auto_model.eval()

    class _Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    example = {
        "input_ids": torch.ones((2, 8), dtype=torch.int64),
        "attention_mask": torch.ones((2, 8), dtype=torch.int64),
        "token_type_ids": torch.zeros((2, 8), dtype=torch.int64),
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(_Pooled(), example_input=example)
    with _publishing(cache, "meta.json") as staging:
        ov.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        (staging / "tokenizer.json").write_text(backend.to_str())
        pad_id = backend.token_to_id(model.tokenizer.pad_token or "[PAD]") or 0
        meta = {
            "source": model_path,
            "window": int(model.max_seq_length),
            "dim": int(model.get_embedding_dimension()),
            "pad_id": int(pad_id),
            "openvino": ov.__version__,
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


@contextmanager
def _publishing(target: Path, last_file: str) -> Iterator[Path]:
    """A staging directory beside `target`, renamed to it once written (whole, or not at all).

    When another process published `target` first (its `last_file` exists), theirs is kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        try:
            staging.rename(target)
        except OSError:
            if not (target / last_file).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_mean_pooling(config: dict[str, Any]) -> bool:
    mode = config.get("pooling_mode")
    if mode is not None:
        return mode == "mean"
    return bool(config.get("pooling_mode_mean_tokens")) and not any(
        value
        for key, value in config.items()
        if key.startswith("pooling_mode_") and key != "pooling_mode_mean_tokens"
    )
