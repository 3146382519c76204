"""The embedded model's training command, at toy sizes: it runs end to end from nothing, writes a
checkpoint the engine serves, and resumes; and the caption parser that pre-trains the text
encoder binds each word to its own object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import T5TokenizerFast  # type: ignore[attr-defined]

from fluxserve.embedded import embedded_checkpoint
from fluxserve.embedded.builder import make_t5_tokenizer
from fluxserve.embedded.vocabulary import BASE_WORDS
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from training.embedded.data import COLOUR_LIST, POSITION_LIST, caption_labels

REPO = Path(__file__).resolve().parents[1]


def _labels(text: str) -> dict[str, list[list[int]]]:
    tok, _ = make_t5_tokenizer(BASE_WORDS)
    pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
    out: dict[str, list[list[int]]] = {}
    for piece, lab in zip(pieces, caption_labels(pieces), strict=True):
        out.setdefault(piece.lstrip("\u2581"), []).append(lab)
    return out


def test_caption_labels_bind_colours_to_their_nouns() -> None:
    a = _labels("a red circle on a blue background")
    b = _labels("a blue circle on a red background")
    red, blue = COLOUR_LIST.index("red"), COLOUR_LIST.index("blue")
    # [role, colour, ...]: role 1 = the first object, 3 = the background
    assert a["red"][0][:2] == [1, red] and a["blue"][0][:2] == [3, blue]
    assert b["blue"][0][:2] == [1, blue] and b["red"][0][:2] == [3, red]
    assert a["circle"][0][1] == red and b["circle"][0][1] == blue


def test_caption_labels_two_objects_positions_and_noise() -> None:
    lab = _labels("A PHOTO OF a small green star in the top left, and a large pink ring on a grey background")
    star, ring = lab["star"][0], lab["ring"][0]
    assert star[0] == 1 and ring[0] == 2
    assert star[1] == COLOUR_LIST.index("green") and ring[1] == COLOUR_LIST.index("pink")
    assert star[3] == 0 and ring[3] == 2  # small, large
    assert star[4] == POSITION_LIST.index("in the top left")
    assert ring[4] == POSITION_LIST.index("anywhere")
    assert lab["grey"][0][:2] == [3, COLOUR_LIST.index("gray")]
    assert lab["and"][0][0] == 0  # a word of no object


def test_tokenizer_words_number_tokens_as_the_shipped_checkpoint() -> None:
    # The word list is derived from the scene vocabulary; reordering it would renumber tokens.
    ckpt = embedded_checkpoint()
    assert ckpt is not None
    shipped = T5TokenizerFast.from_pretrained(str(ckpt / "tokenizer_2"))
    tok, _ = make_t5_tokenizer(BASE_WORDS)
    assert tok.get_vocab() == shipped.get_vocab()


TOY = [
    "--vae-steps", "2", "--vae-batch", "2", "--decoder-steps", "2", "--pool-t2i", "22",
    "--pool-edit", "11", "--text-steps", "2", "--batch", "4", "--edit-batch", "2",
    "--width", "32", "--heads", "2", "--text-dim", "32", "--text-layers", "1", "--curriculum", "0.5",
]  # fmt: skip


def _train(work: Path, out: Path, steps: int) -> str:
    cmd = [sys.executable, "-m", "training.embedded.train", "--work", str(work), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, *TOY, "--steps", str(steps)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,  # training/ is importable from the repository root
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_training_command_runs_from_nothing_and_resumes(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "ckpt"
    log = _train(work, out, 4)
    for stage in ("[autoencoder]", "[data]", "[decoder]", "[text encoder]", "[transformer] 4/4"):
        assert stage in log, stage  # every stage shows progress
    meta = json.loads((out / "fluxserve.json").read_text())
    assert meta["native_area"] == 64 * 64 and meta["training"]["steps"] == 4
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    engine.load(str(out))
    img = engine.generate(EngineRequest(str(out), "a red circle", 112, 64, 1, 2, 2.0))[0]
    assert img.size == (112, 64)

    # Run again with more steps: every finished stage is kept, the transformer continues.
    log = _train(work, out, 6)
    assert "resuming transformer training at step 4" in log
    assert "[autoencoder]" not in log and "[text encoder]" not in log
    assert "[transformer] 6/6" in log
    assert json.loads((out / "fluxserve.json").read_text())["training"]["steps"] == 6


def test_token_weights_weigh_the_outline_on_top_of_the_object() -> None:
    import torch

    from training.embedded.train import token_weights

    mask = torch.zeros(1, 64, 64)
    mask[0, 16:48, 16:48] = 1.0  # tokens 2..5 of 8 (8 px a token), the outline on tokens 1..6's edges
    plain = token_weights(mask, 4, 5.0).view(8, 8)
    edged = token_weights(mask, 4, 5.0, 4.0).view(8, 8)
    assert plain[3, 3] == 5.0 and plain[0, 0] == 1.0
    assert edged[3, 3] == 5.0  # inside, away from the outline: unchanged
    assert edged[2, 3] == 9.0  # inside, on the outline: + 4
    assert edged[1, 3] == 5.0  # background touching the outline: + 4
    assert edged[0, 0] == 1.0


def test_autocast_is_bf16_only_where_bf16_products_are_faster() -> None:
    import contextlib

    import torch

    from training.embedded.precision import autocast, bf16_pays

    ctx = autocast("cpu")
    if bf16_pays("cpu"):
        assert isinstance(ctx, torch.autocast)
    else:
        assert isinstance(ctx, contextlib.nullcontext)
    assert bf16_pays("cuda")
