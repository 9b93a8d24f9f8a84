import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# The suite runs as two xdist workers on two cores: one torch thread per worker. More threads oversubscribe the
# cores (and forked loader workers), which made small-op tests (LSTMs, tiny transformers) up to 100x slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# Reference cases made with the official implementations (see ../shared/golden/README.md).
GOLDEN_DIR = Path(os.environ.get("PERCLI_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

# A Hiera MAE small enough for a test step in milliseconds: 64 px, patch stride 4 -> 16x16 tokens,
# 8x8-token mask units (2x2 units), two poolings (the golden cases' geometry).
TINY_MAE = [
    "model.kwargs={input_size: [64, 64], embed_dim: 8, num_heads: 1, stages: [1, 1, 1, 1], q_pool: 2, "
    "decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 1}",
    "data.embedded_size=64", "train.batch_size=8", "train.num_workers=0", "recon_images=4",
]
TINY_CLS = [
    "model.kwargs={input_size: [64, 64], embed_dim: 8, num_heads: 1, stages: [1, 1, 1, 1]}",
    "data.embedded_size=64", "train.batch_size=8", "train.num_workers=0",
]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process CLI run builds its own Accelerator; drop the singleton state between tests."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


PYTHON = sys.executable
CUDA = torch.cuda.is_available()


def sigterm_after_step(monkeypatch, step: int) -> Callable[[], None]:
    """Make a run send itself SIGTERM right after it logs training step `step` (what SLURM preemption or
    Ctrl-C does, at a known step); returns the function that undoes it."""
    from percli.core import rundir

    write = rundir.MetricsLog.write

    def write_then_signal(self, record):
        write(self, record)
        if record.get("step") == step and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(rundir.MetricsLog, "write", write_then_signal)
    return lambda: monkeypatch.setattr(rundir.MetricsLog, "write", write)


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """A tiny BERT (16 wide, 1 layer, 2 heads) saved with its weights, and the MiniLM package's WordPiece tokenizer:
    a local Hugging Face folder made without any download."""
    import shutil

    from transformers import BertConfig, BertModel

    from percli.curation.text_encoder import minilm_folder

    folder = tmp_path_factory.mktemp("tiny-bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder() / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # 30522: the MiniLM tokenizer's ids
    BertModel(config).save_pretrained(folder)
    return folder
