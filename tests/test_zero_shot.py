"""`percli eval zero-shot`: top-1/top-5 on features whose answer is known, retrieval recalls on a
hand-made similarity matrix, and the command on a trained tiny checkpoint (percli and official formats)."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from percli.cli import app
from percli.models import create_model
from percli.recipes.classification import class_embeddings
from percli.recipes.zero_shot import ZeroShotTask, retrieval_recalls

runner = CliRunner()


class _ConstructedClip(nn.Module):
    """encode_image returns the input as the feature; a prompt's feature is its class axis plus a
    template offset on a spare axis, so the class embedding (mean over templates) is known exactly."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def encode_image(self, image, normalize=False):
        return F.normalize(image, dim=-1) if normalize else image

    def encode_text(self, tokens, normalize=False):
        cls, template = tokens[:, 0], tokens[:, 1]
        x = F.one_hot(cls, self.num_classes + 1).float()
        x[:, -1] = template.float() - 0.5  # +-0.5: averages away over the two templates
        return F.normalize(x, dim=-1) if normalize else x


NAMES = ["cat", "dog", "cow", "owl", "fox", "elk"]
TEMPLATES = ["a {}.", "the {}!"]


def _tokenize(prompts):
    rows = []
    for p in prompts:
        cls = next(i for i, n in enumerate(NAMES) if n in p)
        rows.append([cls, 0 if p.startswith("a ") else 1])
    return torch.tensor(rows)


def test_class_embedding_is_the_normalised_template_mean():
    emb = class_embeddings(_ConstructedClip(6), NAMES, TEMPLATES, _tokenize, torch.device("cpu"))
    assert torch.allclose(emb, torch.eye(6, 7), atol=1e-6)  # the template axis cancels


def test_top1_top5_on_constructed_features():
    model, task = _ConstructedClip(6), ZeroShotTask(_tokenize, NAMES, TEMPLATES)
    # Image features over the 6 class axes (+ the spare axis); label order below.
    scores = torch.tensor([
        [9, 1, 0, 0, 0, 0], [0, 9, 1, 0, 0, 0], [0, 0, 9, 0, 0, 0],  # right: top-1
        [5, 0, 0, 4, 0, 0],  # label 3 ranked 2nd: top-5 only
        [6, 5, 4, 3, 2, 1],  # label 5 ranked 6th: miss
    ], dtype=torch.float)
    labels = torch.tensor([0, 1, 2, 3, 5])
    images = torch.cat([scores, torch.zeros(5, 1)], dim=1)
    sums = task.eval_step(model, {"image": images, "label": labels})
    metrics = task.eval_reduce(sums)
    assert metrics["zero_shot_top1"] == pytest.approx(3 / 5)
    assert metrics["zero_shot_top5"] == pytest.approx(4 / 5)
    assert metrics["chance_top1"] == pytest.approx(1 / 6)


def test_retrieval_recalls_on_a_hand_made_matrix():
    sim = torch.tensor([
        [0.9, 0.1, 0.0, 0.0],   # image 0: partner first
        [0.8, 0.5, 0.0, 0.0],   # image 1: partner second
        [0.3, 0.2, 0.1, 0.4],   # image 2: partner last (4th)
        [0.0, 0.0, 0.0, 1.0],   # image 3: partner first
    ])
    r = retrieval_recalls(sim, ks=(1, 2, 4))
    assert r["image_to_text_R@1"] == 0.5 and r["image_to_text_R@2"] == 0.75 and r["image_to_text_R@4"] == 1.0
    # Columns: text 0 -> images [0.9, .8, .3, 0] rank 1; text 1 -> [.1, .5, .2, 0] rank 1;
    # text 2 -> [0, 0, .1, 0] rank 1; text 3 -> [0, 0, .4, 1.0] rank 1.
    assert r["text_to_image_R@1"] == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP trained for a few steps by `percli pretrain clip`."""
    run = tmp_path_factory.mktemp("clip") / "run"
    out = runner.invoke(app, ["pretrain", "clip", "--run-dir", str(run), "train.max_steps=4", "train.batch_size=16",
                              "train.num_workers=0", "data.embedded_size=64", "--json"])
    assert out.exit_code == 0, out.output
    return run


def test_command_scores_the_embedded_held_out_split(trained, tmp_path):
    ckpt = trained / "checkpoints" / "step_0000004"
    out = runner.invoke(app, ["eval", "zero-shot", f"model.checkpoint={ckpt}", "data.embedded_size=80",
                              "train.num_workers=0", "--run-dir", str(tmp_path / "ev"), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    m = summary["metrics"]
    assert m["chance_top1"] == 0.1 and 0.0 <= m["zero_shot_top1"] <= m["zero_shot_top5"] <= 1.0


def test_command_loads_an_official_state_dict_and_retrieves(trained, tmp_path):
    """An open_clip-format .pt (DDP-prefixed state_dict) + model.name; an ImageFolder and JSONL pairs."""
    from PIL import Image

    from percli.core.checkpoint import read_weights

    state, meta = read_weights(trained / "checkpoints" / "step_0000004")
    official = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, official)
    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps({"model": {"name": meta["name"], "kwargs": meta["kwargs"],
                                            "checkpoint": str(official)}}))
    lines = []
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "text": f"a {colour} square."}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    for colour in ("dark_red", "navy"):  # an ImageFolder: class names from the folders, "_" read as a space
        (tmp_path / "folder" / colour).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour.replace("_", "")).save(tmp_path / "folder" / colour / "a.png")
    out = runner.invoke(app, ["eval", "zero-shot", "--config", str(config), f"data.source={tmp_path / 'folder'}",
                              f"data.pairs={tmp_path / 'pairs.jsonl'}", "train.num_workers=0",
                              "--run-dir", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    m = json.loads((tmp_path / "ev" / "summary.json").read_text())["metrics"]
    assert m["chance_top1"] == 0.5 and m["zero_shot_top5"] == 1.0  # two classes: top-5 is top-2
    assert m["retrieval_pairs"] == 3 and m["image_to_text_R@5"] == 1.0 and m["text_to_image_R@10"] == 1.0


def test_missing_checkpoint_is_a_clear_error():
    out = runner.invoke(app, ["eval", "zero-shot"])
    assert out.exit_code == 2 and "model.checkpoint" in out.output


# --------------------------------------------------------------------------- PE models (squash, input_size)

PE_KWARGS = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2,
                            "output_dim": 16},
             "text_cfg": {"width": 32, "heads": 2, "layers": 1, "output_dim": 16}}


def _left_red(width: int, height: int):
    """A wide image: red in its left eighth, blue elsewhere."""
    from PIL import Image

    image = Image.new("RGB", (width, height), "blue")
    image.paste((255, 0, 0), (0, 0, width // 8, height))
    return image


def test_eval_transform_follows_the_model_pe_squashes_and_clip_crops():
    from percli.core.data.transforms import ImagePreprocess
    from percli.models.pe import PEVisionTransformer

    pe = ImagePreprocess.of(PEVisionTransformer(**PE_KWARGS["vision_cfg"], mlp_ratio=4.0).preprocess)
    clip = ImagePreprocess.of(create_model("clip_vit_b32_quickgelu", embed_dim=16, vision_cfg={
        "image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
        text_cfg={"width": 16, "heads": 2, "layers": 1}).preprocess)
    assert (pe.size, pe.resize_mode, pe.interpolation, pe.mean) == ((32, 32), "squash", "bilinear", (0.5, 0.5, 0.5))
    assert (clip.size, clip.resize_mode, clip.interpolation, clip.crop_pct) == ((32, 32), "shortest", "bicubic", 1.0)
    # metadata written before PE declared image_size/resize_mode reads the same
    assert ImagePreprocess.of({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                               "interpolation": "bilinear", "resize": "squash"}) == pe

    squashed = pe.eval_transform()(_left_red(80, 40))  # the whole image in 32 x 32: the red eighth stays
    assert squashed.shape == (3, 32, 32)
    assert (squashed[0, :, :3] > 0.9).all() and (squashed[0, :, 6:] < -0.9).all()  # red = +1 in PE's range
    cropped = clip.eval_transform()(_left_red(80, 40))  # 40 px high -> 32, 64 wide, centre 32: the red is cut
    assert cropped.shape == (3, 32, 32) and (cropped[2] > 1.0).all()  # blue everywhere


def test_command_evaluates_a_pe_model(tmp_path):
    """`eval zero-shot` with a PE checkpoint (official .pt layout) on non-square images."""
    from PIL import Image

    torch.manual_seed(0)
    checkpoint = tmp_path / "PE-Core-tiny.pt"
    torch.save(create_model("pe_core_t16_384", **PE_KWARGS).state_dict(), checkpoint)
    for colour in ("red", "blue"):
        (tmp_path / "folder" / colour).mkdir(parents=True)
        Image.new("RGB", (60, 30), colour).save(tmp_path / "folder" / colour / "a.png")
    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps({"model": {"name": "pe_core_t16_384", "kwargs": PE_KWARGS,
                                            "checkpoint": str(checkpoint)}}))
    out = runner.invoke(app, ["eval", "zero-shot", "--config", str(config), f"data.source={tmp_path / 'folder'}",
                              "train.num_workers=0", "--run-dir", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    m = json.loads((tmp_path / "ev" / "summary.json").read_text())["metrics"]
    assert m["chance_top1"] == 0.5 and m["zero_shot_top5"] == 1.0


# --------------------------------------------------------------------------- --benchmark imagenet

def test_imagenet_benchmark_lists_are_the_published_ones():
    from percli.recipes.zero_shot import benchmark_class_names, benchmark_lists

    names, templates, wnids = benchmark_lists("imagenet")
    assert len(names) == 1000 and len(templates) == 80 and len(set(templates)) == 80
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert all(t.count("{}") == 1 for t in templates) and "a photo of a {}." in templates
    assert (names[0], names[1], names[999], wnids[0], wnids[999]) == (
        "tench", "goldfish", "toilet paper", "n01440764", "n15075141")
    # folders named by WordNet id or by class index map to the same names; anything else is refused
    assert benchmark_class_names("imagenet", ["n01443537", "n15075141"]) == ["goldfish", "toilet paper"]
    assert benchmark_class_names("imagenet", ["1", "999"]) == ["goldfish", "toilet paper"]
    with pytest.raises(ValueError, match="class folder 'cats' is not a imagenet class"):
        benchmark_class_names("imagenet", ["cats"])


def test_cifar_benchmarks_use_clips_18_templates_and_prompt_names():
    from percli.recipes.zero_shot import benchmark_class_names, benchmark_lists

    for name, count in (("cifar10", 10), ("cifar100", 100)):
        names, templates, ids = benchmark_lists(name)
        assert len(names) == len(ids) == len(set(ids)) == count and len(templates) == 18
        assert names == [i.replace("_", " ") for i in ids]
    assert benchmark_lists("cifar100")[2] == sorted(benchmark_lists("cifar100")[2])  # CIFAR-100's label order
    assert benchmark_lists("cifar10")[0][:3] == ["airplane", "automobile", "bird"]
    # torchvision's CIFAR-100 folder names (underscored) and indices map to CLIP's prompt names
    assert benchmark_class_names("cifar100", ["aquarium_fish", "99", "maple_tree"]) == [
        "aquarium fish", "worm", "maple tree"]
    assert benchmark_class_names("eurosat", ["HerbaceousVegetation", "SeaLake"]) == [
        "brushland or shrubland", "lake or sea"]
    assert benchmark_lists("mnist")[1] == ['a photo of the number: "{}".'] and len(benchmark_lists("eurosat")[1]) == 3


def test_benchmark_imagenet_uses_the_80_templates_and_official_names(tmp_path, monkeypatch):
    """`eval zero-shot --benchmark imagenet` on a 10-class ImageNet-layout folder and a tiny CLIP checkpoint."""
    from PIL import Image

    import percli.recipes.zero_shot as zero_shot

    names, templates, wnids = zero_shot.benchmark_lists("imagenet")
    for i, wnid in enumerate(wnids[:10]):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (40, 36), (25 * i, 0, 255 - 25 * i)).save(tmp_path / "val" / wnid / "a.JPEG")
    kwargs = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16,
                                              "layers": 1},
              "text_cfg": {"width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    checkpoint = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": create_model("clip_vit_b32_quickgelu", **kwargs).state_dict()},
               checkpoint)
    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps({"model": {"name": "clip_vit_b32_quickgelu", "kwargs": kwargs,
                                            "checkpoint": str(checkpoint)}}))
    seen = []

    def recording(model, class_names, prompt_templates, tokenize, device):
        seen.append([t.format(name) for name in class_names for t in prompt_templates])
        return class_embeddings(model, class_names, prompt_templates, tokenize, device)

    monkeypatch.setattr(zero_shot, "class_embeddings", recording)
    out = runner.invoke(app, ["eval", "zero-shot", "--benchmark", "imagenet", "--config", str(config),
                              f"data.source={tmp_path / 'val'}", "train.num_workers=0",
                              "--run-dir", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    prompts = seen[0]
    assert len(prompts) == 10 * 80 and prompts[::80] == [templates[0].format(n) for n in names[:10]]  # 80 per class
    assert prompts[0] == templates[0].format("tench") and prompts[80] == templates[0].format("goldfish")
    assert prompts[-1] == templates[-1].format(names[9]) == templates[-1].format("ostrich")
    m = json.loads((tmp_path / "ev" / "summary.json").read_text())["metrics"]
    assert m["chance_top1"] == 0.1 and 0.0 <= m["zero_shot_top1"] <= m["zero_shot_top5"] <= 1.0


def test_benchmark_refuses_own_class_names_and_unknown_names(tmp_path):
    (tmp_path / "val").mkdir()
    for args, key in ((["--benchmark", "imagenet", "data.classes=[a,b]"], "data.classes"),
                      (["--benchmark", "imagenet21k"], "benchmark"),
                      (["--benchmark", "imagenet", "data.source=embedded"], "data.source")):
        out = runner.invoke(app, ["eval", "zero-shot", *args, f"model.checkpoint={tmp_path}",
                                  *([] if any("source" in a for a in args) else [f"data.source={tmp_path / 'val'}"]),
                                  "--run-dir", str(tmp_path / "ev")])
        assert out.exit_code == 2 and key in out.output, out.output
