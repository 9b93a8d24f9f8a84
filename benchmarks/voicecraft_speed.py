"""VoiceCraft TTS generation speed: percli's KV-cache path against the no-cache path, same model and draws.

Workload: `VoiceCraft.generate` (TTS continuation, top-k 40, the official sampling) from a random
prompt of `--prompt-s` seconds of codec frames and `--phonemes` phoneme ids, batch 1, with random
weights (no checkpoint is needed for speed). Both paths run with the same seed, so they sample the
same tokens (checked: the run fails if they differ) and generate the same number of frames; the
generation is capped by the model's own limit (phonemes x 10 frames) or ends at EOS.

Reported per path: frames/s (new codec frames per second of wall time, median of `--repeats`),
real-time factor (wall seconds per second of audio at 50 frames/s; < 1 is faster than real time),
and the ratio cached / uncached. For reference, the official code generates about 104 frames/s
(fp32) / 64 (bf16) with the 830M model on an H200 (see the issue); run with `--model voicecraft_830m
--device cuda` on a GPU to compare.

Example (tiny model, CPU, about a minute on an idle 2-core machine):
    python benchmarks/voicecraft_speed.py
    python benchmarks/voicecraft_speed.py --model voicecraft_330m --phonemes 40 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from percli.models import create_model

TINY = {"d_model": 128, "audio_embedding_dim": 128, "nhead": 4, "num_decoder_layers": 4, "audio_vocab_size": 2048,
        "text_vocab_size": 100}


def run(model: torch.nn.Module, x: torch.Tensor, prompt: torch.Tensor, kv_cache: bool, seed: int,
        device: str) -> tuple[float, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    frames = model.generate(x, prompt, top_k=40, kv_cache=kv_cache, generator=generator)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (4 layers, d 128) or a registered voicecraft_* name")
    parser.add_argument("--phonemes", type=int, default=12, help="text length; caps generation at 10 x frames")
    parser.add_argument("--prompt-s", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    name = "voicecraft_830m" if args.model == "tiny" else args.model
    model = create_model(name, **(TINY if args.model == "tiny" else {})).eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.text_pad_token, (args.phonemes,), generator=g).to(args.device)  # pad id = vocab size
    prompt = torch.randint(0, model.audio_vocab_size, (model.n_codebooks, int(args.prompt_s * 50)),
                           generator=g).to(args.device)
    results: dict[str, dict] = {}
    outputs = {}
    for kv_cache in (True, False):
        run(model, x, prompt, kv_cache, args.seed, args.device)  # warm-up
        times = []
        for _ in range(args.repeats):
            seconds, frames = run(model, x, prompt, kv_cache, args.seed, args.device)
            times.append(seconds)
        outputs[kv_cache] = frames
        median = statistics.median(times)
        n = frames.shape[1]
        results["kv_cache" if kv_cache else "no_cache"] = {
            "frames": n, "seconds": median, "frames_per_s": n / median, "real_time_factor": median / (n / 50)}
    same = torch.equal(outputs[True], outputs[False])
    summary = {"model": args.model, "device": args.device, "phonemes": args.phonemes, "prompt_s": args.prompt_s,
               "params_m": sum(p.numel() for p in model.parameters()) / 1e6, **results,
               "speedup_kv_cache": results["kv_cache"]["frames_per_s"] / results["no_cache"]["frames_per_s"],
               "same_tokens": same, "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"VoiceCraft {args.model} ({summary['params_m']:.1f}M params) on {args.device}, "
              f"{results['kv_cache']['frames']} new frames from a {args.prompt_s:g} s prompt")
        for key in ("kv_cache", "no_cache"):
            r = results[key]
            print(f"  {key:9s} {r['frames_per_s']:8.1f} frames/s   real-time factor {r['real_time_factor']:.3f}")
        print(f"  KV cache speed-up: {summary['speedup_kv_cache']:.2f}x; same tokens: {same}")
    if not same:
        raise SystemExit("cached and uncached generation sampled different tokens")


if __name__ == "__main__":
    main()
