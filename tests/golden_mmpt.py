"""Golden runners for fairseq MMPT's VideoCLIP (``videoclip_tiny_cfg``) and VLM (``vlm_tiny_cfg``) cases.

Registered into tests/test_golden.py's `RUNNERS` (see `MMPT_RUNNERS`). Each runner replays the case's recorded
calls with a `CallBook`; what the records say only in prose (captured intermediates, the losses, the score
matrices) is implemented by hand and pinned to the verbatim text. VLM's case runs three official wrappers over
one backbone (``model`` = MMFusionMTM, ``joint`` = MMFusionJoint, ``share`` = MMFusionShare): a book per
receiver replays its calls, the main book pins them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tests.golden_replay import CallBook


class _Seen:
    """``with _Seen(outputs={name: module}, inputs={name: module}) as seen:`` -> the module's (first) output /
    first positional input during the block (position ids as the position-embedding table receives them)."""

    def __init__(self, outputs: dict[str, torch.nn.Module] | None = None,
                 inputs: dict[str, torch.nn.Module] | None = None):
        self.outputs, self.inputs, self.seen, self.handles = outputs or {}, inputs or {}, {}, []

    def __enter__(self) -> dict[str, torch.Tensor]:
        def output(name: str):
            def record(_module, _args, out):
                self.seen[name] = out[0] if isinstance(out, tuple) else out
            return record

        def first_input(name: str):
            def record(_module, args):
                self.seen[name] = args[0]
            return record

        self.handles = [m.register_forward_hook(output(n)) for n, m in self.outputs.items()]
        self.handles += [m.register_forward_pre_hook(first_input(n)) for n, m in self.inputs.items()]
        return self.seen

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _book(case: Any, model: Any, receiver: str = "model", **kwargs) -> CallBook:
    return CallBook(case.name, case.config, case.inputs(), model, receivers=(receiver,), **kwargs)


@torch.no_grad()
def run_videoclip(case: Any) -> dict[str, torch.Tensor]:
    from percli.models.mmpt import MMFusionSeparate, mm_contrastive_loss

    kwargs = case.config["constructor_kwargs"]
    model = MMFusionSeparate(case.config["bert_config"], num_hidden_video_layers=kwargs["num_hidden_video_layers"],
                             max_video_len=kwargs["max_video_len"])
    model.load_state_dict(case.state(), strict=True)
    model.eval()
    book = _book(case, model)
    embeddings = model.video_encoder.bert.embeddings
    first = "pooled_video, pooled_text"

    def forward(_: dict) -> dict[str, torch.Tensor]:
        with _Seen(outputs={"video_embedding_output": embeddings},
                   inputs={"video_position_ids": embeddings.position_embeddings}) as seen:
            out = book.execute(first).env["out"]
        return {"pooled_video": out["pooled_video"], "pooled_text": out["pooled_text"], **seen}

    def short(_: dict) -> dict[str, torch.Tensor]:
        key = "short_pooled_video / short_video_position_ids"
        with _Seen(inputs={"ids": embeddings.position_embeddings}) as seen:
            pooled = book._single(key, book.execute(key))
        return {"short_pooled_video": pooled, "short_video_position_ids": seen["ids"]}

    def logits(outputs: dict) -> dict[str, torch.Tensor]:
        video, text = outputs["pooled_video"], outputs["pooled_text"]
        return {"logits_per_video": video @ text.T, "logits_per_text": text @ video.T}

    return book.replay_all(
        custom={first: ((), forward),
                "short_pooled_video / short_video_position_ids": ((), short),
                "logits_per_video / logits_per_text": (
                    ("pooled_video @ pooled_text.T / pooled_text @ pooled_video.T", "no temperature"), logits),
                "contra_loss": (("MMContraLoss()(pooled_video, pooled_text)",), lambda outputs: {
                    "contra_loss": mm_contrastive_loss(outputs["pooled_video"], outputs["pooled_text"])})},
        pins={"video_position_ids": ("position ids seen by video_encoder.bert.embeddings.position_embeddings in "
                                     "that call",),
              "video_embedding_output": ("output of video_encoder.bert.embeddings (MMBertEmbeddings) in that call",)})


_MTM_CALL = "out = model(caps_masked, cmasks, vfeats.clone(), vmasks, video_label=video_label, text_label=text_label)"


@torch.no_grad()
def run_vlm(case: Any) -> dict[str, torch.Tensor]:
    from percli.models.mmpt import MMFusionShare, t2v_contrastive_loss
    from percli.models.vlm import MMFusionJoint, MMFusionMTM, mask_frames, mtm_loss

    cfg, kwargs = case.config, case.config["constructor_kwargs"]
    common = dict(bert_config=cfg["bert_config"], max_video_len=kwargs["max_video_len"],
                  use_seg_emb=kwargs["use_seg_emb"])
    state = case.state()
    model = MMFusionMTM(**common)
    model.load_state_dict(state, strict=True)
    # "MMFusionJoint(config_joint) / MMFusionShare(config_share) ... loaded strictly with state minus mm_encoder.cls.*"
    backbone = {k: v for k, v in state.items() if not k.startswith("mm_encoder.cls.")}
    joint = MMFusionJoint(**common, num_iso_layer=kwargs["num_iso_layer (Joint)"])
    share = MMFusionShare(**common)
    for wrapper in (model, joint, share):
        wrapper.load_state_dict(state if wrapper is model else backbone, strict=True)
        wrapper.eval()
    inputs = case.inputs()
    book = _book(case, model, aliases={"_mm_on_the_fly": "mm_mask_and_token_types"})
    joint_book = _book(case, joint, "joint", aliases={"_mm_attention_mask": "mm_attention_mask"})
    share_book = _book(case, share, "share")
    bert = model.mm_encoder.bert
    joint_key = "joint_pooled_video, joint_pooled_text"

    def mtm(_: dict) -> dict[str, torch.Tensor]:
        args = (inputs["caps_masked"], inputs["cmasks"], inputs["vfeats"], inputs["vmasks"])
        with _Seen(outputs={"mtm_sequence_output": bert, "mtm_embedding_output": bert.embeddings},
                   inputs={"mtm_position_ids": bert.embeddings.position_embeddings}) as seen:
            out = model(*args, video_label=inputs["video_label"], text_label=inputs["text_label"])
        return {**out, **seen, "mtm_vfeats_after_inplace_zeroing": mask_frames(inputs["vfeats"],
                                                                                 inputs["video_label"])}

    def joint_pooled(is_train: bool, names: tuple[str, str]) -> Callable[[dict], dict]:
        def run(_: dict) -> dict[str, torch.Tensor]:
            joint.is_train = is_train
            out = joint_book.execute(joint_key).env["out"]
            joint.is_train = False
            return dict(zip(names, (out["pooled_video"], out["pooled_text"])))
        return run

    def share_pooled(_: dict) -> dict[str, torch.Tensor]:
        out = share_book.execute("share_pooled_video/text, share_logits_per_video").env["out"]
        video, text = out["pooled_video"], out["pooled_text"]
        return {"share_pooled_video": video, "share_pooled_text": text, "share_logits_per_video": video @ text.T}

    def share_sequences(_: dict) -> dict[str, torch.Tensor]:
        caps, cmasks = inputs["caps"], inputs["cmasks"]
        video = share.forward_video(inputs["vfeats"], inputs["vmasks"], caps, cmasks, output_hidden_states=True)
        embeddings = share.mm_encoder.bert.embeddings
        with _Seen(inputs={"ids": embeddings.position_embeddings}) as seen:
            text = share.forward_text(caps, cmasks, output_hidden_states=True)
        return {"share_video_sequence_output": video, "share_text_sequence_output": text,
                "share_text_position_ids": seen["ids"]}

    return book.replay_all(
        custom={
            "video_logits, text_logits": (("model.is_train is True", _MTM_CALL, "hence the clone"), mtm),
            "mtm_loss": (("MTM()(video_logits, text_logits, video_label, text_label)",), lambda o: {
                "mtm_loss": mtm_loss(o["video_logits"], o["text_logits"], inputs["text_label"])}),
            joint_key: (("is_train False, as at test time", "out = joint(caps, cmasks, vfeats, vmasks)"),
                        joint_pooled(False, ("joint_pooled_video", "joint_pooled_text"))),
            "joint_scores_text_x_video": (("joint_pooled_text @ joint_pooled_video.T",), lambda o: {
                "joint_scores_text_x_video": o["joint_pooled_text"] @ o["joint_pooled_video"].T}),
            "joint_t2v_loss": (("T2VContraLoss()(joint_pooled_video, joint_pooled_text)",), lambda o: {
                "joint_t2v_loss": t2v_contrastive_loss(o["joint_pooled_video"], o["joint_pooled_text"])}),
            "joint_iso_attention_mask": (("joint._mm_attention_mask(cmasks, vmasks)",),
                                         lambda _: joint_book.replay("joint_iso_attention_mask")),
            "joint_trainpath_pooled_video/text": (("same with joint.is_train = True",), joint_pooled(
                True, ("joint_trainpath_pooled_video", "joint_trainpath_pooled_text"))),
            "share_pooled_video/text, share_logits_per_video": (
                ("out = share(caps, cmasks, vfeats, vmasks)", "logits = pooled_video @ pooled_text.T"), share_pooled),
            "share_video_sequence_output / share_text_sequence_output / share_text_position_ids": (
                ("share.forward_video(..., output_hidden_states=True)",
                 "share.forward_text(caps, cmasks, output_hidden_states=True)", "(captured)"), share_sequences),
        },
        pins={"mtm_sequence_output / mtm_embedding_output / mtm_position_ids": (
                  "captured (forward hooks) from mm_encoder.bert (output[0]), mm_encoder.bert.embeddings, and the "
                  "position_ids fed to position_embeddings during that call",),
              "mtm_vfeats_after_inplace_zeroing": ("the vfeats clone after the call (masked frames set to 0)",)})


_MMPT_FILE = "examples/MMPT/mmpt/models/mmfusion.py (+ mmpt/models/transformermodel.py, mmpt/modules/mm.py, "

# (official_file, official_class) -> runner, merged into test_golden.RUNNERS
MMPT_RUNNERS: dict[tuple[str, str], Callable[[Any], dict[str, torch.Tensor]]] = {
    (_MMPT_FILE + "mmpt/losses/nce.py::MMContraLoss)", "MMFusionSeparate"): run_videoclip,
    (_MMPT_FILE + "mmpt/losses/nce.py::MTM/T2VContraLoss, mmpt/processors/how2processor.py masking processors)",
     "MMFusionMTM"): run_vlm,
}
