"""PE-AV embedding throughput: percli's codec and text tower against the modules the official code runs.

The official PE-AV (facebookresearch/perception_models, ``core/audio_visual_encoder``) takes two of its
towers from Hugging Face transformers: the DAC-VAE encoder is ``transformers`` ``DacEncoder`` and the text
tower ``ModernBertModel`` (SDPA attention). Those are the peers here, built from the release's
configuration (48 kHz DAC with strides 2*8*10*12, ModernBERT-large with 28 layers) and given percli's
weights; outputs are checked equal before timing. Workloads (items per second, median of interleaved
timed calls): ``codec`` (``--seconds`` of audio per clip), ``text`` (captions of ``--tokens`` tokens).
The official audio / video / audio+video towers are not an installable package, so they have no peer
here (MAViL's is rebuilt from timm modules in ``benchmarks/mavil_speed.py``).

Example:
    python benchmarks/pe_av_speed.py --batch-size 2 --steps 3 --warmup 1 --seconds 4
    python benchmarks/pe_av_speed.py --device cuda --dtype bf16 --batch-size 32 --seconds 10   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from percli.models.dac_vae import DacEncoder
from percli.models.modernbert import ModernBert
from percli.models.pe_av import DEFAULT_DAC, DEFAULT_TEXT

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hiera_speed import DTYPES, _infer_step, _time_pair, parse_timing_args  # noqa: E402  (shared timing helpers)

TEXT = {**DEFAULT_TEXT, "vocab_size": 50368, "intermediate_size": 2624, "max_position_embeddings": 8192,
        "local_attention": 128, "pad_token_id": 50283}


def _codec_pair(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import DacConfig
    from transformers.models.dac.modeling_dac import DacEncoder as HFDacEncoder

    ratios, width = DEFAULT_DAC["downsampling_ratios"], DEFAULT_DAC["encoder_hidden_size"]
    ours = DacEncoder(width, ratios, width * 2 ** len(ratios)).to(device).eval()
    ref = HFDacEncoder(DacConfig(encoder_hidden_size=width, downsampling_ratios=ratios,
                                 hidden_size=width * 2 ** len(ratios))).to(device).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def _text_pair(device: torch.device, layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import ModernBertConfig, ModernBertModel

    cfg = {**TEXT, "num_hidden_layers": layers}
    ours = ModernBert(**cfg).to(device).eval()
    ref = ModernBertModel(ModernBertConfig(**{k: v for k, v in cfg.items() if k != "model_type"},
                                           attn_implementation="sdpa")).to(device).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours, ref


def run(args: argparse.Namespace) -> dict:
    import transformers

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    B = args.batch_size
    results, diffs = {}, {}
    if args.only in (None, "codec"):
        ours, ref = _codec_pair(device)
        wav = 0.1 * torch.randn(B, 1, int(args.seconds * DEFAULT_DAC["sampling_rate"]), device=device)
        with torch.inference_mode():
            diffs["codec"] = (ours(wav) - ref(wav)).abs().max().item()
        secs = _time_pair({"percli": _infer_step(ours, wav, device, dtype, {}),
                           "ref": _infer_step(ref, wav, device, dtype, {})}, args.steps, args.warmup, device)
        results["codec"] = secs
    if args.only in (None, "text"):
        ours, ref = _text_pair(device, args.text_layers)
        ids = torch.randint(5, 50000, (B, args.tokens), device=device)
        with torch.inference_mode():
            diffs["text"] = (ours(ids)[0] - ref(input_ids=ids).last_hidden_state).abs().max().item()
        secs = _time_pair({"percli": _infer_step(ours, ids, device, dtype, {}),
                           "ref": _infer_step(ref, ids, device, dtype, {})}, args.steps, args.warmup, device)
        results["text"] = secs
    table = {name: {"percli_items_s": B / s["percli"], "ref_items_s": B / s["ref"],
                    "ratio_percli_over_ref": s["ref"] / s["percli"]} for name, s in results.items()}
    return {"batch_size": B, "seconds": args.seconds, "tokens": args.tokens, "text_layers": args.text_layers,
            "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "max_abs_diff": diffs,
            "results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per clip (codec workload)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per caption (text workload)")
    parser.add_argument("--text-layers", type=int, default=28, help="ModernBERT layers (the release: 28)")
    parser.add_argument("--only", choices=["codec", "text"], default=None, help="run one workload")
    args = parse_timing_args(parser)
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"batch {out['batch_size']}  {out['device']} {out['dtype']}  threads {out['threads']}  torch {out['torch']}"
          f"  transformers {out['transformers']}  (max |diff| {out['max_abs_diff']})")
    print(f"{'workload':<10}{'percli /s':>11}{'HF /s':>9}{'percli/HF':>11}")
    for name, row in out["results"].items():
        print(f"{name:<10}{row['percli_items_s']:>11.2f}{row['ref_items_s']:>9.2f}{row['ratio_percli_over_ref']:>11.2f}")


if __name__ == "__main__":
    main()
