"""The embedded model's streaming (GPU) trainer, at toy sizes on the CPU: a smoke test of its code
paths (a few steps, not training). The torch scene renderer draws what the PIL renderer draws;
the trainer runs every stage, writes a state that fits a lent machine's $OUT and a checkpoint the
engine serves, and resumes from a returned state; out-of-grammar captions keep their scene."""

from __future__ import annotations

import json
import random
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from fluxserve.embedded.vocabulary import SHAPES
from fluxserve.engines import EngineRequest
from fluxserve.engines.diffusers_engine import DiffusersFluxEngine
from training.embedded.data import caption_labels, to_tensor, wild_caption
from training.embedded.evaluate import analyse, size_for
from training.embedded.gpu_scenes import object_masks, render_batch, scene_tensors
from training.embedded.gpu_train import main
from training.embedded.scenes import random_scene, render
from training.embedded.state import PART_BYTES, load_state, read_summary, save_state
from training.embedded.stream import BatchStream, Recipe, _tokenizer, make_batch, token_ids, worker_pool


def test_torch_renderer_matches_the_pil_renderer() -> None:
    rng = random.Random(7)
    agree = total = 0
    for ratio in ("1:1", "16:9", "3:7"):
        w, h = size_for(ratio, 64 * 64, 8)
        scenes = []
        for i in range(24):  # every shape in the first slot, 4 times
            s = random_scene(rng, w, h, rng.choice((1, 2)))
            scenes.append(replace(s, objects=(replace(s.objects[0], shape=SHAPES[i % 6]), *s.objects[1:])))
        want = torch.stack([to_tensor(render(s, w, h)) for s in scenes])
        got = render_batch(scene_tensors(scenes, w, h), w, h)
        levels = (got - want).abs() * 127.5  # in 0..255 steps
        # Stated tolerance: under 1 level on average, under 20 at the 99th percentile; what
        # differs is outline pixels (a ramp against PIL's 4x4 subpixels)
        assert levels.mean() < 1.0, levels.mean()
        assert levels.flatten().quantile(0.99) < 20, levels.flatten().quantile(0.99)
        assert torch.equal(
            object_masks(got, scene_tensors(scenes, w, h).background).sum((1, 2)) > 0,
            torch.ones(len(scenes), dtype=torch.bool),
        )
        # ... and the evaluator reads the same scene from both
        big = size_for(ratio, 256 * 256, 16)
        for s, g in zip(scenes, got, strict=True):
            arr = ((g.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            a = analyse(Image.fromarray(arr).resize(big, Image.Resampling.LANCZOS))
            b = analyse(render(s, w, h).resize(big, Image.Resampling.LANCZOS))
            agree += a[0] == b[0] and [(f.colour, f.shape, f.cell) for f in a[1]] == [
                (f.colour, f.shape, f.cell) for f in b[1]
            ]
            total += 1
    assert agree / total >= 0.95, (agree, total)


def test_stream_batches_and_wild_captions() -> None:
    batch = make_batch(Recipe("edit", 72, 56, 6, seed=3))
    assert batch["source"]["shape"].shape == (6, 2) and batch["ids"].shape == (6, 32)
    assert batch["labels"].shape == (6, 32, 5)
    singles = make_batch(Recipe("t2i", 64, 64, 8, seed=4, singles=True))
    assert singles["target"]["present"].sum(1).tolist() == [1] * 8
    # the fast tokenizer path gives the pipeline's ids
    texts = ["a red circle", "", "A PHOTO OF a large blue ring in the top left on a grey background"]
    want = _tokenizer()(texts, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert torch.equal(token_ids(texts, 32), want.input_ids)
    # out-of-grammar words: the colour words that remain still bind to their object
    rng = random.Random(1)
    scene = random_scene(rng, 64, 64, 1)
    seen = set()
    for _ in range(40):
        text = wild_caption(scene, rng)
        seen.add(any(word in text.split() for word in SHAPES))
        pieces = _tokenizer().convert_ids_to_tokens(token_ids([text], 32)[0].tolist())
        assert len(caption_labels(pieces)) == 32
    assert seen == {True, False}  # some keep the shape word, some do not


def test_worker_processes_draw_the_same_batches_as_the_caller() -> None:
    def plan(i: int) -> Recipe:
        return Recipe("edit" if i % 2 else "t2i", 64, 64, 3, seed=100 + i)

    pool = worker_pool(1)
    try:
        stream = BatchStream(plan, pool, ahead=2)
        drawn = [stream.next() for _ in range(3)]
        stream.close()
    finally:
        pool.shutdown()
    inline = BatchStream(plan, None)
    for got in drawn:
        want = inline.next()
        assert got["kind"] == want["kind"] and (got["ids"] == want["ids"]).all()
        assert all((got["target"][k] == want["target"][k]).all() for k in want["target"])


def test_state_parts_round_trip(tmp_path: Path) -> None:
    big = {"w": torch.arange(PART_BYTES // 4 + 1000, dtype=torch.float32), "step": 3}
    save_state(big, tmp_path, {"stage": "text"})
    save_state(big | {"step": 4}, tmp_path, {"stage": "text"})  # replaces the first save
    summary = read_summary(tmp_path)
    assert summary is not None and summary["generation"] == 2 and len(summary["parts"]) == 2
    assert sorted(p.name for p in tmp_path.glob("state.*.pt")) == summary["parts"]
    back = load_state(tmp_path)
    assert back["step"] == 4 and torch.equal(back["w"], big["w"])


TOY = [
    "--device", "cpu", "--workers", "0", "--roundtrip", "2", "--vae-steps", "2", "--vae-batch", "2",
    "--text-steps", "2", "--batch", "4", "--edit-batch", "2", "--width", "32", "--heads", "2",
    "--text-dim", "32", "--text-layers", "1", "--vae-blocks", "8,16,32", "--curriculum", "0.5",
    "--wild-captions", "0.3", "--vae-edge-weight", "5", "--transformer-minutes", "60",
]  # fmt: skip


def test_streaming_trainer_writes_state_and_checkpoint_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    main([*TOY, "--out", str(out1), "--steps", "2"])
    log = capsys.readouterr().out
    for line in ("[vae] step 2", "[vae] round trip", "[text] step 2", "[transformer] step 2", "[export]"):
        assert line in log, line
    summary = read_summary(out1)
    assert summary is not None and summary["stage"] == "done"
    assert summary["steps"] == {"vae": 2, "text": 2, "transformer": 2}
    files = sorted(p.name for p in out1.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out1.iterdir()), files
    with tarfile.open(out1 / "checkpoint.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    ckpt = tmp_path / "unpacked" / "checkpoint"
    meta = json.loads((ckpt / "fluxserve.json").read_text())
    assert meta["training"]["vae_blocks"] == "8,16,32" and meta["gpu_training"]["stage"] == "done"

    # The next command: the returned state carried back in, one more step, a new checkpoint
    # (and --reuse 2: each scene of that step at two noise levels)
    before = summary["samples"]["transformer"]
    main(
        [
            *TOY,
            "--out",
            str(out2),
            "--resume",
            str(out1),
            "--steps",
            "3",
            "--reuse",
            "2",
            "--export",
            str(tmp_path / "ckpt"),
        ]
    )
    log = capsys.readouterr().out
    assert "resuming transformer training at step 2" in log
    assert "[vae] step" not in log and "[text] step" not in log
    summary = read_summary(out2)
    assert summary is not None and summary["steps"]["transformer"] == 3 and summary["stage"] == "done"
    assert summary["samples"]["transformer"] - before in (2 * 2, 2 * 4)  # an edit or a t2i batch, twice
    engine = DiffusersFluxEngine(lambda name: Path(name), device="cpu")
    engine.load(str(tmp_path / "ckpt"))
    img = engine.generate(EngineRequest(str(tmp_path / "ckpt"), "a red circle", 112, 64, 1, 2, 2.0))[0]
    assert img.size == (112, 64)


def test_a_stopped_command_saves_and_the_next_continues_the_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    main([*TOY, "--out", str(out), "--vae-steps", "1000", "--stop-after", "0.05", "--steps", "2"])
    summary = read_summary(out)
    assert summary is not None and summary["stage"] == "vae"
    done = summary["steps"]["vae"]
    assert 0 < done < 1000
    # --until: the autoencoder's stage ends (and is scored), nothing of the transformer runs
    main(
        [*TOY, "--out", str(out), "--vae-steps", str(done + 1), "--text-steps", "1", "--until", "transformer"]
    )
    summary = read_summary(out)
    assert summary is not None and summary["stage"] == "transformer" and summary["steps"]["vae"] == done + 1
    assert set(summary["vae_roundtrip"]) >= {"shape", "all"} and summary["steps"]["transformer"] == 0
    main([*TOY, "--out", str(out), "--vae-steps", str(done + 1), "--text-steps", "1", "--steps", "1"])
    summary = read_summary(out)
    assert summary is not None and summary["stage"] == "done" and summary["steps"]["transformer"] == 1
