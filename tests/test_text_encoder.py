"""Text encoders: the offline MiniLM folder, feature hashing, user entry points, and spec errors."""

import numpy as np
import pytest

from percli.curation.text_encoder import HashingEncoder, load_text_encoder, minilm_folder


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm")


def test_minilm_orders_sentences_by_meaning_with_unit_384d_rows(minilm):
    texts = ["a photo of a dog", "a puppy playing", "stock market report", "shares fell on wall street"]
    emb = minilm.encode(texts, batch_size=2)
    assert minilm.name == "minilm" and minilm.dim == 384
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # dog ~ puppy, far from finance
    assert sim[2, 3] > sim[2, 1] + 0.2  # finance ~ finance
    assert minilm.encode([], 8).shape == (0, 384)


def test_a_sentence_transformers_folder_loads_by_path(minilm):
    by_path = load_text_encoder(str(minilm_folder()))
    assert by_path.dim == 384
    np.testing.assert_allclose(by_path.encode(["a red car"]), minilm.encode(["a red car"]), atol=1e-5)


def test_hashing_is_deterministic_unit_norm_and_word_based():
    enc = load_text_encoder("hashing")
    a = enc.encode(["A dog on the beach", "a dog on the beach", "stock market"])
    b = HashingEncoder().encode(["A dog on the beach"])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], a[1])  # lower-cased before hashing
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert abs(float(a[0] @ a[2])) < 0.5


FACTORY_MODULE = '''
import numpy as np

class Toy:
    name = "toy"
    dim = 3

    def encode(self, texts, batch_size):
        return [[len(t), 1.0, 0.0] for t in texts]  # a list, not unit-norm: the loader fixes both

class Broken:
    name = "broken"
    dim = 4

    def encode(self, texts, batch_size):
        return np.ones((len(texts), 2))

def make():
    return Toy()

def make_broken():
    return Broken()

def make_nothing():
    return object()
'''


def test_module_factory_plugs_in_and_is_normalised(tmp_path, monkeypatch):
    (tmp_path / "toy_encoder_mod.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = load_text_encoder("toy_encoder_mod:make")
    assert (enc.name, enc.dim) == ("toy", 3)
    emb = enc.encode(["abc", "a"], 16)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, [[3 / np.sqrt(10), 1 / np.sqrt(10), 0], [1 / np.sqrt(2), 1 / np.sqrt(2), 0]],
                               atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        load_text_encoder("toy_encoder_mod:make_broken").encode(["x"], 1)
    with pytest.raises(ValueError, match="lacks encode, dim, name"):
        load_text_encoder("toy_encoder_mod:make_nothing")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_text_encoder("toy_encoder_mod:missing")


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:make", "cannot import"),
    ("./no/such/folder", "does not exist"),
    ("bert-large", "unknown text encoder"),
])
def test_bad_specs_say_what_to_pass(spec, message):
    with pytest.raises(ValueError, match=message):
        load_text_encoder(spec)


def test_folder_without_sentence_transformers_files_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a sentence-transformers folder"):
        load_text_encoder(str(tmp_path))
