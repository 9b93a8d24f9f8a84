"""Every runnable job by name: the registry the CLI is generated from.

A job is a verb and a method (`percli pretrain hiera-mae`, `percli curate cit`), a module holding a
typed `Config` dataclass (defaults = the paper's recipe) and `run(cfg, ctx) -> summary`, presets
(YAML under `percli/presets/<verb>-<method>/`), and how its positional arguments and documented
flags map onto config keys. Everything else a run needs (presets, `--config`, dotted overrides,
`--dry-run`, `show-config`, the run dir, `config.yaml`/`env.json`/`summary.json`, `--json`,
`--resume`, the lock, exit codes) is the same for every job (see `percli.commands.run`).

This module imports no job module and no torch: `percli --help` and `percli ls` read only it.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from percli.core.config import ConfigError, apply_overrides, check_values, load_yaml, merge

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Arg:
    """A command-line argument of a job and the config key it sets.

    Positional when `flags` is empty (`many`: any number of values, a list key). Otherwise an option
    (`flags` like ("--metadata", "-m")): a value, a switch (`switch`: true when given) or, with
    `many`, repeatable.
    """

    key: str
    flags: tuple[str, ...] = ()
    help: str = ""
    switch: bool = False
    many: bool = False
    metavar: str | None = None

    @property
    def positional(self) -> bool:
        return not self.flags


@dataclass(frozen=True)
class Job:
    verb: str
    method: str
    module: str
    summary: str
    default_preset: str | None = None
    """Preset applied when the user gives neither --preset nor --config."""
    args: tuple[Arg, ...] = ()
    engine: bool = False
    """Runs on the training engine (one Accelerator for the run) rather than as a data job."""
    output_flag: bool = False
    """Writes a data product: the run dir is `--output/-o` (as data tools name it), not `--run-dir`."""
    resumable: bool = True
    """Has a --resume (continues an interrupted run in its run dir)."""
    keeps_run_dir: bool = True
    """False: without --run-dir it runs in a temporary run dir, removed at the end (what it prints is its product:
    `percli chat`), as an eval job does."""
    examples: tuple[str, ...] = field(default_factory=tuple)

    @property
    def scratch_run_dir(self) -> bool:
        """Run in a temporary run dir unless one is given: an eval job that cannot resume, or `keeps_run_dir` off."""
        return (self.verb == "eval" and not self.resumable) or not self.keeps_run_dir

    @property
    def name(self) -> str:
        return f"{self.verb} {self.method}".strip()

    def load(self) -> Any:
        return importlib.import_module(self.module)

    def doc(self) -> str:
        """The module's docstring, read from its file without importing it or its packages (no torch for --help)."""
        path = Path(__file__).parent.joinpath(*self.module.split(".")[1:]).with_suffix(".py")
        return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""

    @property
    def preset_dir(self) -> Path:
        return PRESET_DIR / f"{self.verb}-{self.method}"

    def presets(self) -> list[str]:
        folder = self.preset_dir
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []

    def resolve_config(self, preset: str | None = None, config_file: str | None = None,
                       overrides: list[str] | None = None, base: dict | None = None,
                       given: dict[str, Any] | None = None) -> Any:
        """Defaults -> preset -> `base` (a resumed run's config) -> --config FILE -> the job's own
        arguments (`given`, a nested mapping) -> dotted overrides."""
        cfg = self.load().Config()
        if preset is None and config_file is None and base is None:
            preset = self.default_preset
        if preset and preset != "none":
            path = self.preset_dir / f"{preset}.yaml"
            if not path.is_file():
                raise ConfigError(f"--preset {preset!r}: unknown for {self.method}; choose from "
                                  f"{', '.join(self.presets() + ['none'])}")
            cfg = merge(cfg, load_yaml(path))
        if base:
            cfg = merge(cfg, base)
        if config_file:
            cfg = merge(cfg, load_yaml(config_file))
        if given:
            cfg = merge(cfg, given, overlay=True)
        cfg = apply_overrides(cfg, overrides or [])
        check_values(cfg)
        return cfg


def _engine(verb: str, method: str, module: str, summary: str, default_preset: str | None = "tiny",
            args: tuple[Arg, ...] = ()) -> Job:
    return Job(verb, method, f"percli.recipes.{module}", summary, default_preset, args=args, engine=True,
               resumable=verb != "eval")


_LAYERS = Arg("layers", ("--layers",), "Layer sweep: `all` or block indices (0,4,8,-1); a layer-vs-accuracy "
              "table, and layers.png in the run dir.", metavar="all|K,K")

_INPAINT = (
    Arg("images", help="Image files and/or folders (video files for a video DiffMAE run).", many=True,
        metavar="IMAGE"),
    Arg("checkpoint", ("--checkpoint",), "A `percli pretrain diffmae` run dir, checkpoint dir or .safetensors."),
    Arg("masks", ("--masks",), "A folder of mask PNGs named as the images (white = inpaint), or one PNG; a "
        "video's mask applies to every frame."),
    Arg("mask_ratio", ("--mask-ratio",), "Share of patches inpainted when no --masks are given."),
    Arg("steps", ("--steps",), "DDIM steps."),
    Arg("seed", ("--seed",), "Seed of the random masks and of the sampler."),
)

JOBS: list[Job] = [
    _engine("pretrain", "hiera-mae", "hiera_mae",
            "Hiera masked-autoencoder pretraining, image or video (Ryali et al., ICML 2023)"),
    _engine("finetune", "hiera", "hiera_classify",
            "Hiera image/video classification from an MAE checkpoint or from scratch"),
    _engine("pretrain", "diffmae", "diffmae",
            "DiffMAE: masked autoencoder with a diffusion decoder on the masked patches (Wei et al., ICCV 2023)"),
    _engine("finetune", "diffmae", "diffmae_classify",
            "DiffMAE encoder classification (MAE's fine-tuning ViT) from a pretrain-diffmae run or from scratch"),
    _engine("pretrain", "soundscape", "soundscape",
            "Audio-visual soundscape stylization: mel VAE + latent diffusion on self-supervised clip pairs "
            "(Li et al., ECCV 2024)"),
    _engine("pretrain", "vocoder", "vocoder",
            "HiFi-GAN generator for the soundscape log-mels (Kong et al., NeurIPS 2020; GAN-free losses)"),
    _engine("pretrain", "mha-vse", "mha_vse",
            "Multilingual visual-semantic embedding with diverse attention heads (Huang et al., EMNLP 2019)"),
    _engine("pretrain", "ummt", "ummt",
            "Unsupervised multimodal MT from monolingual image captions, with pseudo visual pivoting (Huang et al., "
            "ACL 2020)"),
    _engine("finetune", "stmt", "stmt",
            "STMT: spatial-temporal mesh transformer for MoCap action recognition (Zhu, Huang et al., CVPR 2023)"),
    _engine("finetune", "yt8m", "yt8m",
            "YouTube-8M multi-label video classification: MoE / residual-hypercolumn / temporal-segment models and "
            "latent concept mining on first-stage scores (Huang et al., CMU Informedia 2017)"),
    _engine("eval", "gap", "gap_eval",
            "GAP@20, hit@1 and PERR of finetune-yt8m runs, and their weighted ensemble fit on the validate split",
            None, (Arg("runs", help="Finished `percli finetune yt8m` runs (run dirs, checkpoint dirs or "
                       ".safetensors).", many=True, metavar="RUN"),)),
    _engine("finetune", "av-fusion", "av_fusion",
            "Audio-visual event classifier with early, middle or late fusion (the victims of Li et al., ICASSP 2021)"),
    _engine("eval", "adversarial", "adversarial_eval",
            "FGSM/PGD (L-inf, L2, L1; per-example or universal) on the audio, video or both inputs of a classifier: "
            "metric-vs-eps curve (Li et al., ICASSP 2021)", None),
    _engine("finetune", "amvc", "amvc",
            "AMVC: unsupervised video domain adaptation by adversarially masked consistency (Zhu, Huang et al., 2024)"),
    _engine("pretrain", "stmt", "stmt_pretrain",
            "STMT masked vertex modelling + future frame prediction on unlabelled mesh sequences (CVPR 2023)"),
    _engine("pretrain", "audio-mae", "audio_mae",
            "Audio-MAE pretraining on fbank spectrograms (Huang et al., NeurIPS 2022)"),
    _engine("finetune", "audio-mae", "audio_classify",
            "Audio-MAE classification: multi-label (mAP, d-prime) or single-label (accuracy)"),
    _engine("pretrain", "voicecraft", "voicecraft",
            "VoiceCraft codec-LM pretraining by token infilling on (audio, transcript) pairs (Peng et al., ACL 2024)"),
    _engine("pretrain", "clip", "clip",
            "CLIP contrastive image-text pretraining, MetaCLIP recipe (Radford et al. 2021; Xu et al., ICLR 2024)"),
    _engine("pretrain", "flap", "flap",
            "FLAP language-audio pretraining: masked multi-view contrast + reconstruction (Yeh et al., ICASSP 2024)"),
    _engine("pretrain", "mavil", "mavil_pretrain",
            "MAViL audio-video pretraining: masked reconstruction + intra/inter-modal contrast, stage-2 self-training "
            "(Huang et al., NeurIPS 2023)"),
    _engine("pretrain", "videoclip", "videoclip",
            "VideoCLIP: contrastive video-text pretraining with overlapping clips and retrieval-augmented batches "
            "(Xu et al., EMNLP 2021)"),
    _engine("pretrain", "vlm", "vlm",
            "VLM masked modality pretraining: one shared BERT, masked token model over frames + vocabulary "
            "(Xu et al., Findings ACL 2021)"),
    _engine("pretrain", "mmp", "mmp",
            "MMP: multilingual video-text pretraining on (x, v, y) triples, inter-modal + cross-lingual + "
            "conditional contrast, per-language retrieval (Huang, Patrick et al., NAACL 2021)"),
    _engine("pretrain", "support-set", "support_set",
            "Support-set bottlenecks: video-text contrast + cross-captioning from the other samples' videos "
            "(Patrick, Huang et al., ICLR 2021)"),
    _engine("pretrain", "pe-av", "pe_av",
            "PE-AV: pairwise contrastive audio / video / audio+video / text training (Vyas et al. 2025)"),
    _engine("pretrain", "cit", "cit",
            "CiT: curation in training, the text tower picks its own data every N steps (Xu et al., ICCV 2023)"),
    _engine("pretrain", "dinov2", "dinov2",
            "DINOv2 self-distillation pretraining: DINO + iBOT + KoLeo, multi-crop, EMA teacher (Oquab et al. 2023)"),
    _engine("finetune", "dinov2", "dinov2_classify",
            "DINOv2 classification finetuning (linear head on cls + mean patch), any resolution by interpolation"),
    _engine("finetune", "altogether", "altogether",
            "Altogether captioner: image + alt-text -> re-aligned caption, CLIP prefix + OPT (Xu et al., EMNLP 2024)"),
    _engine("finetune", "mavil", "mavil_classify",
            "MAViL classification: fused audio+video, audio-only or video-only heads on AudioSet/VGGSound/JSONL "
            "manifests or the embedded clips (mAP or top-1/top-5)"),
    _engine("finetune", "videoclip", "videoclip_finetune",
            "VideoCLIP retrieval finetuning: text->video InfoNCE on MSR-VTT / YouCook2 / VATEX captions over "
            "per-second features"),
    _engine("finetune", "vlm", "vlm_finetune",
            "VLM retrieval finetuning: the shared encoder, modality-isolated, text->video InfoNCE on MSR-VTT / "
            "YouCook2 / VATEX captions over per-second features"),
    _engine("finetune", "plm", "plm_finetune",
            "PerceptionLM training: projector warm-up, mid-training and SFT stages on image/video conversations, "
            "loss on the answers (Cho et al., 2025)"),
    _engine("finetune", "pe-a-frame", "pe_a_frame",
            "PE-A-Frame: frame-level audio-text training for sound event detection on strong labels"),
    _engine("eval", "zero-shot", "zero_shot",
            "Zero-shot top-1/top-5 classification and image-text retrieval R@1/5/10 of a CLIP checkpoint", None,
            (Arg("benchmark", ("--benchmark",), "a published protocol: imagenet (CLIP's 1,000 class names and "
                 "80 prompt templates on an ImageNet-layout data.source), cifar10, cifar100, mnist, eurosat (CLIP's "
                 "names and templates)", metavar="NAME"),)),
    _engine("eval", "retrieval", "retrieval_eval",
            "Text<->audio/video/audio+video and audio<->video retrieval R@1/5/10, median rank, mAP@10 of a PE-AV, "
            "CLIP, MAViL, FLAP or video-text (videoclip, vlm, support-set, mmp) model", None),
    _engine("eval", "classify", "classify_eval",
            "Top-1/top-5 (or multi-label mAP) of a Hiera or Audio-MAE classifier checkpoint on a dataset", None),
    _engine("eval", "knn", "knn_eval",
            "Temperature-weighted k-NN top-1/top-5 of an image encoder's frozen features (DINO/DINOv2 eval)", None,
            (_LAYERS,)),
    _engine("eval", "linear-probe", "linear_probe",
            "Linear classifier on an image encoder's frozen features, best of a learning-rate sweep", None,
            (_LAYERS,)),
    _engine("eval", "dense", "dense_eval",
            "Linear segmentation (mIoU) and linear depth (RMSE, AbsRel) on a frozen DINOv2's patch tokens"),
]

JOBS += [
    Job("pretrain", "rwr-gae", "percli.graph.job",
        "GAE, VGAE and their random-walk-regularised versions RWR-GAE/RWR-VGAE (Vaibhav et al., arXiv 1908.04003)",
        resumable=False, args=(
            Arg("graphs", ("--graph",), "cora, a .npz in the cora layout, Planetoid files (ind.<name>.*) or an "
                "edge-list text file; repeat for several graphs, each trained and scored on its own.", many=True,
                metavar="GRAPH"),
            Arg("features", ("--features",), "Node features for an edge list (.npz)."),
            Arg("labels", ("--labels",), "Classes for the clustering metrics: one integer per line."),
            Arg("model", ("--model",), "gae | vgae | rwr-gae | rwr-vgae | all."),
            Arg("seeds", ("--seeds",), "Number of seeds (split, weights, walks, k-means)."),
            Arg("seed", ("--seed",), "First seed; the runs use seed, seed+1, ..."),
            Arg("train.epochs", ("--epochs",), "Training epochs (full-batch)."),
            Arg("train.walk_length", ("--walk-length",), "Nodes per random walk."),
            Arg("train.window_size", ("--window-size",), "Skip-gram window within a walk; 0 = the start node with "
                "every later node (the early RWR-GAE code's default)."),
            Arg("train.number_walks", ("--number-walks",), "Walks per epoch."),
            Arg("train.lr_dw", ("--lr-dw",), "Adam learning rate of the skip-gram context vectors."),
            Arg("train.negative", ("--negative",), "Negative samples per pair; 0 = full softmax (the paper)."),
            Arg("train.walk_weight", ("--walk-weight",), "Scale of the walk loss's gradient (0 = plain GAE)."),
            Arg("save_embeddings", ("--save-embeddings",), "Save mu of every model and seed.", switch=True),
        ), examples=("percli pretrain rwr-gae --graph cora --model all --seeds 5",)),
]

# --- curation jobs (curate metaclip run|match|count|balance|build-metadata, cit, mode, text-quality) ---
_SHARDS_HELP = ("Shards or patterns: .jsonl, .jsonl.gz, .parquet, WebDataset .tar; braces and globs expand (quote "
                "them): 'pool-{000..099}.tar', 'data/*.parquet'.")
_SELECT_INPUTS = Arg("inputs", help="JSONL or Parquet shards (braces and globs expand; default: the embedded demo "
                     "pool).", many=True, metavar="INPUT")
_METADATA = Arg("metadata", ("--metadata", "-m"), "MetaCLIP metadata.json (a JSON list), a text file with one entry "
                "per line, or a build-metadata run dir.")
_TEXT_FIELD = Arg("text_field", ("--text-field",), "Record field (JSONL, Parquet column) holding the text; for tar "
                  "shards the member extension (txt) or the field of the sample's .json.")
_T = Arg("t", ("--t",), "Balancing threshold: entries matched more than t times are down-sampled to ~t. Default 20000 "
         "(MetaCLIP-400M), 100 for the demo.")
_SEED = Arg("seed", ("--seed",), "Seed of the per-record keep decisions.")
_OUTPUT_FORMAT = Arg("output_format", ("--output-format",), "same: kept records in the input's format; index: per "
                     "shard a JSONL of {index, key, entries} of the kept records, without copies.")
_ENCODER = Arg("encoder", ("--encoder", "-e"), "Text encoder: minilm (all-MiniLM-L6-v2, offline), hashing, a "
               "sentence-transformers folder, or module:factory.")
JOBS += [
    Job("curate", "metaclip run", "percli.curation.metaclip_job",
        "MetaCLIP 1 curation in one go: match texts to metadata, count entries, balance with threshold t "
        "(Xu et al., ICLR 2024)", output_flag=True, args=(
            Arg("inputs", help=_SHARDS_HELP + " Default: the embedded demo pool.", many=True, metavar="INPUT"),
            _METADATA, _T, _SEED, _TEXT_FIELD, _OUTPUT_FORMAT,
        ), examples=("percli curate metaclip 'pool-{000..099}.parquet' -m metadata.json --t 20000 -o curated",
                     "percli curate metaclip")),
    Job("curate", "metaclip match", "percli.curation.metaclip_match_job",
        "MetaCLIP stage 1: match every text to the metadata (matches/<shard>.npz)", output_flag=True, args=(
            Arg("inputs", help=_SHARDS_HELP, many=True, metavar="INPUT"), _METADATA, _TEXT_FIELD,
        ), examples=("percli curate metaclip match 'pool-{000..099}.tar' -m metadata.json --text-field txt "
                     "-o work/match",)),
    Job("curate", "metaclip count", "percli.curation.metaclip_count_job",
        "MetaCLIP stage 2: global per-entry counts over shards and processes (entry_counts.json)",
        output_flag=True, args=(
            Arg("sources", help="The output dir of a match run, or shards to match first.", many=True,
                metavar="MATCH_DIR|INPUT"), _METADATA, _TEXT_FIELD,
        ), examples=("percli curate metaclip count work/match -m metadata.json -o work/count",)),
    Job("curate", "metaclip balance", "percli.curation.metaclip_balance_job",
        "MetaCLIP stage 3: keep each text with probability 1 - prod(1 - min(1, t/c_e)) (curated/)",
        output_flag=True, args=(
            Arg("inputs", help=_SHARDS_HELP, many=True, metavar="INPUT"), _METADATA,
            Arg("counts", ("--counts",), "entry_counts.json of the whole pool (from `count`, or the official "
                "entry_counts_400m.json)."),
            Arg("t", ("--t",), "Balancing threshold (MetaCLIP-400M: 20000)."), _SEED, _TEXT_FIELD,
            Arg("matches", ("--matches",), "Output dir of a match (or count) run over these inputs: reuse its "
                "matches instead of matching again."), _OUTPUT_FORMAT,
        ), examples=("percli curate metaclip balance 'pool-{000..099}.tar' -m metadata.json --text-field txt "
                     "--t 20000 --counts work/count/entry_counts.json --matches work/match -o work/curated",)),
    Job("curate", "metaclip build-metadata", "percli.curation.metadata_job",
        "Build MetaCLIP's metadata list (\"0\"..\"99\", WordNet, Wikipedia unigrams, bigrams, titles) by the "
        "official rules, or check one", output_flag=True, resumable=False, args=(
            Arg("wordnet", ("--wordnet",), "Folder with the WordNet 3.0 database files data.{noun,verb,adj,adv} "
                "(Debian/Ubuntu: apt-get install wordnet-base)."),
            Arg("no_wordnet", ("--no-wordnet",), "Leave the WordNet synsets out.", switch=True),
            Arg("unigrams", ("--unigrams",), "Word counts: the official enwiki-unigram.txt (\"word count\"), or "
                "word<TAB>count TSV (.gz read too). Repeatable. The word 'wordfreq' instead takes the "
                "--wordfreq-top most frequent English words of the wordfreq package.", many=True),
            Arg("min_unigram_count", ("--min-unigram-count",), "Keep words counted at least this often."),
            Arg("wordfreq_top", ("--wordfreq-top",), "Words taken by --unigrams wordfreq (default: the paper's "
                "unigram count)."),
            Arg("bigrams", ("--bigrams",), "Bigram counts: the official 2gram.txt.gz (count<TAB>w1<TAB>w2), or "
                "\"w1 w2\"<TAB>count."),
            Arg("bigram_unigrams", ("--bigram-unigrams",), "Unigram counts the PMI is computed over: the official "
                "1gram.txt.gz (count<TAB>word) or word<TAB>count (default: the single --unigrams file)."),
            Arg("min_pmi", ("--min-pmi",), "Keep bigrams with PMI at least this."),
            Arg("titles", ("--titles",), "Wikipedia pageview dumps (pageviews-YYYYMMDD-HH0000.gz), the official "
                "title_counts.json, or title<TAB>views TSV. Repeatable; quote a pattern to pass many: "
                "--titles 'pageviews/*.gz'.", many=True),
            Arg("min_title_views", ("--min-title-views",), "Keep titles viewed at least this often in total."),
            Arg("max_entries", ("--max-entries",), "Stop adding entries at this size."),
            Arg("from_file", ("--from",), "Check and re-write an existing metadata.json instead of building one "
                "(ids unchanged)."),
        ), examples=("percli curate metaclip build-metadata --unigrams enwiki-unigram.txt --bigrams 2gram.txt.gz "
                     "--bigram-unigrams 1gram.txt.gz --titles 'pageviews/*.gz' -o work/metadata",
                     "percli curate metaclip build-metadata --from metadata.json -o work/checked")),
    Job("curate", "cit", "percli.curation.cit_job",
        "CiT selection: keep captions close to the task's class names in a text encoder's space "
        "(Xu et al., ICCV 2023)", output_flag=True, resumable=False, args=(
            _SELECT_INPUTS,
            Arg("metadata", ("--metadata", "-m"), "The task's class names: a text file, one per line, or a JSON "
                "list (default with no inputs: a few animal names found in the demo pool)."),
            _ENCODER,
            Arg("threshold", ("--threshold",), "Keep captions whose max cosine similarity to a class name is above "
                "this (CiT: 0.55 YFCC15M, 0.7 YFCC100M)."),
            Arg("min_ratio", ("--min-ratio",), "Per batch: if fewer than this fraction pass, keep the top "
                "min_ratio*batch instead (CiT: 0.003 YFCC15M, 0.01 YFCC100M)."),
            Arg("batch_size", ("--batch-size",), "Captions per batch (encoding and the min-ratio rule)."),
            Arg("top_ratio", ("--top-ratio",), "Instead of the threshold: keep exactly this fraction of the pool, "
                "most similar first."),
            Arg("text_field", ("--text-field",), "Record field holding the caption."),
        ), examples=("percli curate cit pool.jsonl --metadata imagenet_classes.txt --threshold 0.55",)),
    Job("curate", "mode", "percli.curation.mode_job",
        "MoDE: cluster captions into fine clusters and coarse data experts, assign a pool, weight the experts "
        "(Ma et al., CVPR 2024)", output_flag=True, resumable=False, args=(
            _SELECT_INPUTS,
            Arg("fine", ("--fine",), "Fine clusters m (MoDE: 1024; 32 for the demo pool)."),
            Arg("coarse", ("--coarse",), "Coarse clusters n = data experts (MoDE: 4)."),
            Arg("distance", ("--distance",), "k-means distance: euclidean or cosine."),
            Arg("balanced", ("--balanced/--no-balanced",), "Size-constrained (balanced) k-means, as MoDE; or plain "
                "k-means.", switch=True),
            Arg("init", ("--init",), "Center initialisation: k-means++ or random."),
            _ENCODER,
            Arg("batch_size", ("--batch-size",), "Texts per encoder batch."),
            Arg("fit_fraction", ("--fit-fraction",), "Seeded share of the pool the clusters are fitted on "
                "(MoDE: ~5%)."),
            Arg("seed", ("--seed",), "Seed of the fit sample and of the k-means initialisation."),
            Arg("classes", ("--classes",), "Task class names, one per line: writes ensemble_weights.json."),
            Arg("templates", ("--templates",), "Prompt templates with {}, one per line (default: 'a photo of a "
                "{}.')."),
            Arg("centers", ("--centers",), "Reuse a mode_centers.safetensors: assign and weight only, no refit."),
            Arg("text_field", ("--text-field",), "Record field holding the caption."),
            Arg("expert_shards", ("--expert-shards",), "Also write experts/expert_<k>.jsonl, each data expert's "
                "training records (JSONL inputs).", switch=True),
            Arg("ooc_ratio", ("--ooc-ratio",), "Share of the other clusters' records in each expert shard "
                "(MoDE: 0.02)."),
        ), examples=("percli curate mode pool.jsonl --fine 1024 --coarse 4 --fit-fraction 0.05 --classes "
                     "classes.txt --expert-shards",)),
    Job("curate", "text-quality", "percli.curation.text_quality_job",
        "Text-quality pruning: weighted line filters, token-weighted document score (Sharma et al. 2024)",
        output_flag=True, resumable=False, args=(
            Arg("inputs", help="JSONL or Parquet shards, one document per record (braces and globs expand; "
                "default: the embedded demo pool).", many=True, metavar="INPUT"),
            Arg("prune", ("--prune",), "Fraction of documents dropped, lowest scores first (the paper: 0.2-0.4)."),
            Arg("weights", ("--weights", "-w"), "Filter weights as JSON {filter: weight} (e.g. a run's "
                "weights.json); default: estimated from a reference LM's perplexity."),
            Arg("lm_docs", ("--lm-docs",), "Documents the reference LM and the weights are estimated on (the "
                "first ones)."),
            Arg("text_field", ("--text-field",), "Record field holding the document."),
        ), examples=("percli curate text-quality corpus.jsonl --prune 0.3",)),
]

# --- captioning and speech jobs (caption altogether, eval caption, tts edit|synthesize) ---
_TTS_WEIGHTS = (
    Arg("weights.checkpoint", ("--checkpoint",), "VoiceCraft weights: the release .pth (giga830M.pth, "
        "830M_TTSEnhanced.pth, ... from huggingface.co/pyp1/VoiceCraft), a Hugging Face model folder, or a "
        "`percli pretrain voicecraft` run/checkpoint dir. Default: $PERCLI_VOICECRAFT_CHECKPOINT."),
    Arg("weights.codec", ("--codec",), "Codec weights: encodec_4cb2048_giga.th from huggingface.co/pyp1/VoiceCraft "
        "(or percli safetensors); not needed for a percli checkpoint that names its codec. "
        "Default: $PERCLI_VOICECRAFT_CODEC."),
    Arg("alignment", ("--alignment",), 'Word timings of the audio: JSON ({"words": [{"word", "start", "end"}, ...]}, '
        "whisperX or MFA), Praat TextGrid or MFA CSV. Default: align offline with pocketsphinx."),
    Arg("weights.device", ("--device",), "torch device (default: cuda if available, else cpu)."),
)


def _tts_sampling(off: str, num_samples: str) -> tuple[Arg, ...]:
    return (
        Arg("sampling.top_k", ("--top-k",), "Sample among the k most likely codes (0 = all)."),
        Arg("sampling.top_p", ("--top-p",), "Nucleus sampling mass (1 = off)."),
        Arg("sampling.temperature", ("--temperature",), "Softmax temperature."),
        Arg("sampling.stop_repetition", ("--stop-repetition",), "Penalise codebook-0 silence repeated more than "
            f"this many times {off}."),
        Arg("sampling.num_samples", ("--num-samples",), num_samples),
        Arg("sampling.seed", ("--seed",), "Seed of the sampling generator (the same seed gives the same audio)."),
        Arg("sampling.kv_cache", ("--kv-cache/--no-kv-cache",), "Reuse attention keys/values between steps "
            "(default on).", switch=True),
    )


# PerceptionLM generation (percli chat, percli caption plm): the model and decoding options both take
_PLM_GENERATION = (
    Arg("model.checkpoint", ("--checkpoint",), "A PerceptionLM release folder (Hugging Face or perception_models "
        "layout, e.g. Perception-LM-1B) or a `percli finetune plm` run. Default: $PERCLI_PLM_CHECKPOINT."),
    Arg("model.tokenizer", ("--tokenizer",), "Tokenizer folder or file (default: the checkpoint's)."),
    Arg("generation.max_new_tokens", ("--max-new-tokens",), "New tokens per answer at most (256; the context "
        "bounds it too)."),
    Arg("generation.temperature", ("--temperature",), "0 (default): greedy; > 0: nucleus sampling at this "
        "temperature."),
    Arg("generation.top_p", ("--top-p",), "Nucleus sampling mass (with --temperature > 0)."),
    Arg("generation.greedy", ("--greedy",), "Greedy decoding whatever --temperature says.", switch=True),
    Arg("generation.stop", ("--stop",), "An extra stop string, cut from the answer (repeat for several).",
        many=True),
    Arg("generation.seed", ("--seed",), "Seed of the sampling."),
    Arg("model.max_frames", ("--max-frames",), "Frames per video (default: the checkpoint's, 32 released)."),
    Arg("model.max_tiles", ("--max-tiles",), "Tiles per image besides the thumbnail (default: the checkpoint's, "
        "36 released)."),
    Arg("model.device", ("--device",), "torch device (default: cuda if available, else cpu)."),
    Arg("model.dtype", ("--dtype",), "auto (bf16 on a GPU, fp32 on the CPU) | fp32 | bf16 | fp16 (GPU only)."),
)


JOBS += [
    Job("caption", "altogether", "percli.captioning.caption_job",
        "Re-align the alt-texts of image shards into captions with a trained Altogether captioner (Xu et al., "
        "EMNLP 2024)", output_flag=True, args=(
            Arg("images", ("--images",), "A folder with records.jsonl, or .jsonl/.parquet/.tar shards (braces and "
                "globs expand; quote them). Repeat for several.", many=True),
            Arg("alt_text", ("--alt-text",), "Record field / tar member extension of the alt-text."),
            Arg("checkpoint", ("--checkpoint",), "A `percli finetune altogether` run dir, one of its checkpoints, or "
                "a .safetensors."),
            Arg("batch_size", ("--batch-size",), "Images captioned at a time."),
            Arg("chunk_size", ("--chunk-size",), "Records per part file: the unit a resume skips."),
            Arg("generation.strategy", ("--strategy",), "sample (official: T 0.2, top-p 0.7) | greedy | beam."),
            Arg("generation.temperature", ("--temperature",), "Sampling temperature."),
            Arg("generation.top_p", ("--top-p",), "Nucleus sampling mass."),
            Arg("generation.num_beams", ("--num-beams",), "Beams of --strategy beam."),
            Arg("generation.max_new_tokens", ("--max-new-tokens",), "Default: the checkpoint's max_target_len."),
            Arg("precision", ("--precision",), "fp32 | fp16 (GPU only) | bf16."),
            Arg("generation.seed", ("--seed",), "Seed of the sampling (per chunk, so a resume is reproducible)."),
            Arg("write_shards", ("--write-shards",), "Also write each input shard with its captions into "
                "<output>/shards/ (JSONL field / Parquet column `altogether`, tar member <key>.altogether.txt).",
                switch=True),
        ), examples=("percli caption altogether --images runs/finetune-altogether-X/heldout --checkpoint "
                     "runs/finetune-altogether-X -o runs/captions",
                     "percli caption altogether --images 'pool-{000..099}.tar' --alt-text txt --checkpoint RUN "
                     "-o out --resume")),
    Job("caption", "plm", "percli.recipes.plm_caption",
        "Caption folders, manifests or shards of images and videos with a PerceptionLM, batched and resumable "
        "(Cho et al., 2025)", output_flag=True, args=(
            Arg("inputs", help="Folders of images/videos (or holding records.jsonl), media files, or "
                ".jsonl/.parquet/.tar shards (braces and globs expand; quote them).", many=True, metavar="INPUT"),
            Arg("prompt", ("--prompt",), "The question asked of every image/video; {media} becomes image, images "
                "or video (default: \"Describe the {media}.\")."),
            *_PLM_GENERATION,
            Arg("batch_size", ("--batch-size",), "Prompts generated at a time."),
            Arg("chunk_size", ("--chunk-size",), "Records per part file: the unit a resume skips."),
            Arg("output_format", ("--output-format",), "jsonl (captions.jsonl) | parquet (captions.parquet)."),
            Arg("write_shards", ("--write-shards",), "Also write each .jsonl/.parquet/.tar input with its captions "
                "into <output>/shards/ (JSONL field / Parquet column `plm_caption`, tar member "
                "<key>.plm_caption.txt).", switch=True),
        ), examples=("percli caption plm /data/clips --checkpoint /models/Perception-LM-1B -o runs/clip-captions",
                     "percli caption plm 'shards/{000..099}.tar' --checkpoint /models/Perception-LM-3B --prompt "
                     "\"Describe the {media} in one sentence.\" --write-shards -o out --resume")),
    Job("chat", "", "percli.recipes.plm_chat",
        "Ask a PerceptionLM about an image or a video: one answer on stdout, or an interactive chat on a terminal "
        "(Cho et al., 2025)", resumable=False, keeps_run_dir=False, args=(
            Arg("question", help="The question (none on a terminal: an interactive chat).", metavar="QUESTION"),
            Arg("image", ("--image",), "An image file to ask about."),
            Arg("video", ("--video",), "A video file to ask about."),
            *_PLM_GENERATION,
        ), examples=('percli chat --image photo.jpg --checkpoint /models/Perception-LM-1B "What is the man holding?"',
                     'percli chat --video clip.mp4 --max-frames 16 --json "When does the door open?"',
                     "percli chat --video clip.mp4    # on a terminal: an interactive chat")),
    Job("eval", "caption", "percli.captioning.eval_job",
        "BLEU-4, CIDEr-D (and CLIP-score) of predicted captions against references, joined on a key",
        output_flag=True, resumable=False, args=(
            Arg("captions", ("--captions",), "Predicted captions: JSONL records with the key and each --field (e.g. "
                "percli caption altogether's output)."),
            Arg("references", ("--references",), "Reference captions: JSONL records with the key and "
                "--reference-field (a string or a list of strings)."),
            Arg("fields", ("--field",), "Field of the predictions to score (default altogether); repeat to "
                "compare, e.g. --field altogether --field alt_text.", many=True),
            Arg("reference_field", ("--reference-field",), "Field of the references."),
            Arg("key", ("--key",), "Field (a string) that joins predictions and references."),
            Arg("clip_checkpoint", ("--clip-checkpoint",), "CLIP for the CLIP-score: a percli pretrain-clip "
                "checkpoint dir / .safetensors, or an open_clip/MetaCLIP file with --clip-model."),
            Arg("clip_model", ("--clip-model",), "Model name of an official CLIP file, e.g. "
                "clip_vit_b32_quickgelu."),
            Arg("images", ("--images",), "Folder of the images (CLIP-score): the records' 'image' paths are "
                "relative to it, else <key>.png."),
            Arg("batch_size", ("--batch-size",), "CLIP batch size."),
        ), examples=("percli eval caption --captions runs/alt-captions/captions.jsonl --references "
                     "runs/altogether/heldout/records.jsonl --field altogether --field alt_text",)),
    Job("tts", "edit", "percli.tts.edit_job",
        "Change what a recording says, in the same voice: only the words that differ are regenerated (VoiceCraft, "
        "Peng et al., ACL 2024)", resumable=False, args=(
            Arg("audio", help="The recording to edit.", metavar="AUDIO"),
            Arg("transcript", ("--transcript",), "What the recording says."),
            Arg("target", ("--target",), "What the edited recording should say."),
            *_TTS_WEIGHTS,
            Arg("output", ("--output", "-o"), "Output WAV/FLAC (default <run dir>/<AUDIO stem>_edited.wav); "
                "--overwrite replaces an existing file."),
            *_tts_sampling("(-1 = off, official)", "Draw N edits one after another and keep the shortest."),
        ), examples=('percli tts edit talk.wav --transcript "I saw the lake" --target "I saw the frozen lake" '
                     "--checkpoint giga830M.pth --codec encodec_4cb2048_giga.th --alignment talk.TextGrid "
                     "-o edited.wav",)),
    Job("tts", "synthesize", "percli.tts.synthesize_job",
        "Say new text in the voice of a short prompt recording (zero-shot TTS with VoiceCraft)", resumable=False,
        args=(
            Arg("prompt", ("--prompt",), "A recording of the voice to clone (a few seconds)."),
            Arg("prompt_text", ("--prompt-text",), "What the prompt says."),
            Arg("text", ("--text",), "What to say in that voice."),
            Arg("cut_off", ("--cut-off",), "Use only the prompt's first SEC seconds, cut at the nearest word end "
                "(needs word timings). Default: the whole prompt.", metavar="SEC"),
            *_TTS_WEIGHTS,
            Arg("output", ("--output", "-o"), "Output WAV/FLAC (default <run dir>/<PROMPT stem>_tts.wav); "
                "--overwrite replaces an existing file."),
            Arg("include_prompt", ("--include-prompt",), "Write the prompt before the new speech.", switch=True),
            *_tts_sampling("(-1 = off)", "Sample N continuations as one batch and keep the first to end, the "
                           "shortest (official: 3; fewer long pauses)."),
        ), examples=('percli tts synthesize --prompt voice.wav --prompt-text "Thanks for calling." --text "How can '
                     'I help you today?" --checkpoint 830M_TTSEnhanced.pth --codec encodec_4cb2048_giga.th '
                     "-o reply.wav",)),
    Job("eval", "tts", "percli.tts.eval_job",
        "WER/CER (offline ASR), speaker similarity and mel-cepstral distortion of speech edits and syntheses, as "
        "the VoiceCraft paper reports them", output_flag=True, resumable=False, args=(
            Arg("manifest", help="A JSONL/CSV manifest of {generated, reference, prompt, transcript, edit, id} rows, "
                "a `percli tts edit|synthesize` run dir, or `embedded` (espeak-ng sentences).",
                metavar="MANIFEST|RUN_DIR"),
            Arg("eval.asr", ("--asr",), "pocketsphinx (offline, default) or a local Hugging Face ASR folder "
                "(Whisper, wav2vec2-CTC; needs transformers)."),
            Arg("eval.speaker_model", ("--speaker-model",), "auto (Resemblyzer's GE2E weights if installed), a GE2E "
                ".pt, a local Hugging Face speaker-verification folder, or none."),
            Arg("eval.device", ("--device",), "torch device of the models (default: cuda when available)."),
        ), examples=("percli eval tts embedded -o runs/eval-tts-embedded --json",
                     "percli eval tts runs/tts-edit-X -o runs/eval-edit-X",
                     "percli eval tts generated.jsonl --speaker-model /models/wavlm-base-plus-sv -o runs/eval-tts")),
]

# --- selection, search, conversion and AV-SUPERB jobs (select run|simulate, search-arch, convert, eval av-superb) ---
_STRATEGY_HELP = ("random; least-confidence, margin, entropy (--probs); bald (--mc-probs); coreset (--embeddings); "
                  "badge (--probs and --embeddings).")
JOBS += [
    Job("select", "run", "percli.active.select_job",
        "Active learning: pick the pool points to label next from a model's outputs on the pool",
        resumable=False, args=(
            Arg("strategy", ("--strategy", "-s"), _STRATEGY_HELP),
            Arg("budget", ("--budget", "-b"), "How many pool points to pick."),
            Arg("probs", ("--probs",), "Softmax probabilities [N, C] of the current model on the pool."),
            Arg("embeddings", ("--embeddings",), "Penultimate features [N, D] of the pool (core-set, BADGE)."),
            Arg("mc_probs", ("--mc-probs",), "Probabilities [T, N, C] of T forward passes with dropout on (BALD)."),
            Arg("labelled", ("--labelled",), "Already labelled points, never picked: integer indices "
                "(.npy/.npz/.safetensors or a .txt, one per line) or a boolean mask [N] (dtype bool)."),
            Arg("ids", ("--ids",), "Text file, one id per pool point: copied into the output."),
            Arg("output", ("--output", "-o"), "Output JSONL, one {rank, index, id, score} per pick (default "
                "RUN_DIR/picks.jsonl); --overwrite replaces an existing one."),
            Arg("seed", ("--seed",), "Seed of random, BADGE's draws and core-set's start without labels."),
        ), examples=("percli select --strategy badge --budget 100 --probs probs.npy --embeddings feats.npy "
                     "--labelled labelled.npy --ids pool_ids.txt -o to_label.jsonl",)),
    Job("select", "simulate", "percli.active.simulate",
        "Simulate the active-learning loop (random initial set, then train -> score pool -> query -> label) per "
        "strategy on digits", resumable=False, args=(
            Arg("dataset", ("--dataset",), "digits: scikit-learn's bundled 8x8 digits (offline)."),
            Arg("strategies", ("--strategies",), "Comma-separated, from random, least-confidence, margin, entropy, "
                "bald, coreset, badge."),
            Arg("seeds", ("--seeds",), "Repeats (initial set, model init, draws); curves are averaged."),
            Arg("initial", ("--initial",), "Random labelled points before the first query."),
            Arg("budget", ("--budget",), "Points queried per round."),
            Arg("rounds", ("--rounds",), "Query rounds (the model is trained rounds + 1 times)."),
            Arg("steps", ("--steps",), "Full-batch Adam steps per training (fewer: faster, noisier)."),
        ), examples=("percli select simulate --strategies random,entropy,margin,bald,coreset,badge --seeds 3 "
                     "--rounds 10",)),
    Job("search-arch", "", "percli.nas.job",
        "Architecture search on scikit-learn's 8x8 digits: random search, regularised evolution or DARTS",
        args=(
            Arg("strategy", ("--strategy",), "random | evolution (regularised, aging) | darts."),
            Arg("space", ("--space",), "Search space of random/evolution: vit-tiny (default, 216 ViT configs) or "
                "vit-micro (32)."),
            Arg("budget", ("--budget",), "Candidates to evaluate (random/evolution), repeats included."),
            Arg("proxy_steps", ("--proxy-steps",), "Training steps (batch 64) of each candidate, and of the "
                "architecture DARTS derives."),
            Arg("lr", ("--lr",), "AdamW learning rate of the proxy training (cosine to 0)."),
            Arg("population", ("--population",), "Evolution: population size P (the P youngest)."),
            Arg("sample", ("--sample",), "Evolution: members S sampled per cycle; the best is the parent."),
            Arg("darts.epochs", ("--epochs",), "DARTS: search epochs over the train split."),
            Arg("darts.arch_lr", ("--arch-lr",), "DARTS: Adam learning rate of alpha."),
            Arg("seed", ("--seed",), "Seed of the proposals, the initialisations and the batches."),
        ), examples=("percli search-arch --strategy evolution --space vit-tiny --budget 40 --population 10 --sample 3",
                     "percli search-arch --strategy darts --epochs 10",
                     "percli search-arch --strategy random --budget 80 --run-dir runs/nas --resume")),
    Job("convert", "", "percli.models.convert_job",
        "Convert official checkpoints to percli weight files and back, for every registered model family",
        resumable=False, args=(
            Arg("source", help="The checkpoint to convert.", metavar="SRC"),
            Arg("output", ("--output", "-o"), "Where to write (.safetensors; .pt/.pth with --to official); "
                "--overwrite replaces an existing file."),
            Arg("model", ("--model", "-m"), "Registered model name (`percli ls models`); read from a percli file's "
                "metadata if omitted."),
            Arg("kwargs", ("--kwargs",), "JSON constructor arguments of the model, if not the registered defaults."),
            Arg("to", ("--to",), "percli | official"),
        ), examples=("percli convert metaclip_b32_400m.pt -o b32.safetensors --model clip_vit_b32_quickgelu",
                     "percli convert b32.safetensors --to official -o b32_open_clip.pt")),
    Job("eval", "av-superb", "percli.avsuperb.job",
        "AV-SUPERB audio-visual benchmark (Tseng et al., ICASSP 2024) of a percli encoder or your own upstream",
        args=(
            Arg("upstream", ("--upstream", "-u"), "audio-mae | hiera-video | audio-mae+hiera-video | mavil | pe-av | "
                "module:factory (your own upstream)."),
            Arg("checkpoint", ("--checkpoint",), "Weights of a single-model upstream: a percli checkpoint (e.g. from "
                "percli pretrain audio-mae) or an official .pth."),
            Arg("audio_checkpoint", ("--audio-checkpoint",), "Audio side of the fusion upstream."),
            Arg("video_checkpoint", ("--video-checkpoint",), "Video side of the fusion upstream."),
            Arg("upstream_kwargs", ("--upstream-kwargs",), "JSON keywords for the upstream (model, model_kwargs; or "
                "your factory's)."),
            Arg("tasks", ("--tasks",), "Comma-separated tasks: as20k, vggsound, ks, ucf101, iemocap, voxceleb, lrs3."),
            Arg("features", ("--features",), "audio | video | fusion | all | default (each task's official choice, "
                "fusion, or what the upstream has)."),
            Arg("data", ("--data",), "TASK=DIR, the dataset folder of a task (repeat). Tasks without one run on the "
                "synthetic mini-benchmark.", many=True),
            Arg("minibench", ("--minibench",), "Where the mini-benchmark is generated (once, then reused)."),
            Arg("steps", ("--steps",), "Override the optimiser steps of every task."),
            Arg("batch_size", ("--batch-size",), "Override the training batch size."),
            Arg("lr", ("--lr",), "Override the learning rate."),
            Arg("layer", ("--layer", "-l"), "Use one upstream layer instead of the weighted sum."),
            Arg("normalize", ("--normalize",), "Layer-norm each layer before the weighted sum.", switch=True),
            Arg("trainable", ("--trainable",), "Finetune the upstream with the head (no feature cache; much slower).",
                switch=True),
            Arg("seed", ("--seed",), "Seed of the upstream's random init, the heads and the batches."),
            Arg("cache_dir", ("--cache-dir",), "Feature cache (default RUN_DIR/features); reused when nothing "
                "changed."),
            Arg("cpu", ("--cpu",), "Force CPU even when a GPU is visible.", switch=True),
        ), examples=("percli eval av-superb --upstream audio-mae --checkpoint runs/amae/checkpoints/step_0000300",
                     "percli eval av-superb --upstream audio-mae+hiera-video --audio-checkpoint A --video-checkpoint V "
                     "--data ks=/datasets/kinetics-sounds --tasks ks --features all",
                     "percli eval av-superb --upstream my_pkg.experts:build --tasks as20k,voxceleb --json")),
    Job("eval", "plm-videobench", "percli.recipes.plm_videobench_eval",
        "PLM-VideoBench of a PerceptionLM (Cho et al., 2025): FGQA MBAcc, SGQA accuracy, RCap judge score, RTLoc "
        "meanR/mIoU, RDCap SODA_c, with an LLM judge (OpenAI-compatible endpoint or a PLM checkpoint)", args=(
            Arg("checkpoint", ("--checkpoint",), "The model under test: a PLM release folder or a `percli finetune "
                "plm` run / checkpoint."),
            Arg("tokenizer", ("--tokenizer",), "The model's tokenizer folder/file, when not beside the checkpoint."),
            Arg("tasks", ("--tasks",), "Comma-separated: fgqa, sgqa, rcap, rtloc, rdcap, or all (every task with "
                "annotations)."),
            Arg("annotations", ("--annotations",), "TASK=FILE (.jsonl/.parquet/.json; repeat), or a folder laid out "
                "as the hub's facebook/PLM-VideoBench.", many=True),
            Arg("split", ("--split",), "Split read from a hub-layout folder (test, val)."),
            Arg("region_boxes", ("--region-boxes",), "Region metadata of rcap/rtloc/rdcap (default: the folder's "
                "metadata/metadata_<split>.jsonl)."),
            Arg("media_root", ("--media-root",), "Folder of the videos: DIR, or TASK=DIR per task (stc=DIR for "
                "rcap, rtloc, rdcap); default the annotation file's folder.", many=True),
            Arg("limit", ("--limit",), "Only the first N questions of each task."),
            Arg("max_new_tokens", ("--max-new-tokens",), "Tokens generated per answer (default: the benchmark's "
                "16, or 512 for rcap/rdcap; at most 4096)."),
            Arg("num_frames", ("--num-frames",), "Frames of the SGQA and region-task videos (the benchmark's 32)."),
            Arg("batch_size", ("--batch-size",), "Questions answered per generate call."),
            Arg("num_workers", ("--num-workers",), "Processes decoding videos ahead of the model."),
            Arg("device", ("--device",), "auto | cpu | cuda | cuda:N."),
            Arg("dtype", ("--dtype",), "auto (bfloat16 on a GPU) | float32 | bfloat16 | float16."),
            Arg("judge", ("--judge",), "none: run only the judge-free tasks (fgqa, rtloc)."),
            Arg("judge_endpoint", ("--judge-endpoint",), "OpenAI-compatible chat endpoint of the judge, e.g. "
                "http://localhost:8000/v1 (vLLM)."),
            Arg("judge_model", ("--judge-model",), "Model name the endpoint serves (the benchmark: "
                "Llama-3.3-70B-Instruct)."),
            Arg("judge_api_key_env", ("--judge-api-key-env",), "Environment variable holding the endpoint's API key."),
            Arg("judge_checkpoint", ("--judge-checkpoint",), "A PerceptionLM used as a text-only judge."),
            Arg("judge_lenient", ("--judge-lenient",), "Also read a JSON verdict inside a longer judge reply.",
                switch=True),
        ), examples=("percli eval plm-videobench --checkpoint /models/Perception-LM-8B --annotations "
                     "/data/PLM-VideoBench --media-root fgqa=/data/fgqa --media-root sgqa=/data/sgqa --media-root "
                     "stc=/data/sav_6fps --judge-endpoint http://localhost:8000/v1 --judge-model "
                     "meta-llama/Llama-3.3-70B-Instruct --run-dir runs/videobench",
                     "percli eval plm-videobench --checkpoint runs/finetune-plm-X --annotations /data/PLM-VideoBench "
                     "--media-root fgqa=/data/fgqa --media-root stc=/data/sav_6fps --judge none --limit 200",
                     "percli eval plm-videobench --run-dir runs/videobench --resume")),
]

# --- audio-visual inference jobs (embed, detect events, eval sed) ---
JOBS += [
    Job("extract", "features", "percli.recipes.extract_features",
        "Per-second video features with a frozen CLIP / PE image tower or video Hiera, one safetensors file per "
        "video (resumable, shard-parallel): the video-language recipes' input", output_flag=True, args=(
            Arg("inputs", help="Video files, folders of videos, or one JSONL manifest ({\"id\", \"video\"}).",
                many=True, metavar="VIDEOS"),
            Arg("checkpoint", ("--checkpoint",), "The frozen encoder: a percli run dir, checkpoint or .safetensors of "
                "an image-text model (CLIP / PE) or a video Hiera."),
            Arg("fps", ("--fps",), "Feature rows per second (1: the papers' S3D rate)."),
            Arg("frames_per_step", ("--frames-per-step",), "Image encoders: frames averaged per row."),
            Arg("batch_size", ("--batch-size",), "Frames or clips per forward."),
        ), examples=("percli extract features /data/msrvtt/videos --checkpoint runs/clip -o feats/msrvtt",)),
    Job("extract", "regions", "percli.recipes.extract_regions",
        "Grid region features of images with a frozen image encoder, one .npy per image (resumable, "
        "shard-parallel): the grounding recipes' input", output_flag=True, args=(
            Arg("inputs", help="Image files or folders.", many=True, metavar="IMAGES"),
            Arg("checkpoint", ("--checkpoint",), "The frozen encoder: a percli run dir, checkpoint or .safetensors of "
                "a ViT image model (CLIP / PE, DINOv2)."),
            Arg("grid", ("--grid",), "Cells per side of the pooled grid (0: the model's own patch grid)."),
            Arg("layer", ("--layer",), "Block whose tokens are read (-1: the last)."),
            Arg("batch_size", ("--batch-size",), "Images per forward."),
        ), examples=("percli extract regions /data/flickr30k-images --checkpoint runs/pe-core -o /data/multi30k",)),
    Job("inpaint", "", "percli.recipes.inpaint",
        "Inpaint images or videos with a DiffMAE model: sampled completions, a grid PNG, PSNR/SSIM vs the "
        "mean-colour fill",
        output_flag=True, resumable=False, args=_INPAINT, examples=(
            "percli inpaint photo.jpg --checkpoint runs/pretrain-diffmae-X --mask-ratio 0.75 -o runs/inpainted",
            "percli inpaint /data/val --masks /data/val_masks --checkpoint runs/pretrain-diffmae-X -o runs/inp",
            "percli inpaint clips/ --checkpoint runs/pretrain-diffmae-video-X --mask-ratio 0.9 -o runs/inp-video")),
    Job("tts", "stylize", "percli.tts.stylize_job",
        "Re-record speech as if in the scene of a hint clip: its reverberation and background (soundscape "
        "stylization, Li et al., ECCV 2024)", resumable=False, args=(
            Arg("speech", help="The speech to re-record (any sample rate; resampled).", metavar="SPEECH"),
            Arg("hint", ("--hint",), "The scene: a video with sound (audio + middle frame) or an audio file."),
            Arg("hint_image", ("--hint-image",), "The scene's picture, for an audio hint."),
            Arg("checkpoint", ("--checkpoint",), "A `percli pretrain soundscape` run dir, checkpoint dir or "
                ".safetensors."),
            Arg("output", ("--output", "-o"), "Output WAV/FLAC (default <run dir>/<SPEECH stem>_stylized.wav; a PNG "
                "spectrogram beside it); --overwrite replaces an existing file."),
            Arg("steps", ("--steps",), "DDIM steps."),
            Arg("guidance_scale", ("--guidance",), "Classifier-free guidance on the hint (1 = off)."),
            Arg("vocoder", ("--vocoder",), "A `percli pretrain vocoder` run (default: Griffin-Lim)."),
            Arg("enhance", ("--enhance",), "Input enhancement: spectral, none, external:<module>:<function> "
                "(default: the run's)."),
            Arg("seed", ("--seed",), "Seed of the sampler and of Griffin-Lim's phases."),
            Arg("device", ("--device",), "cuda or cpu (default: cuda when available)."),
        ), examples=("percli tts stylize talk.wav --hint street.mp4 --checkpoint runs/pretrain-soundscape-X "
                     "-o talk_street.wav",
                     "percli tts stylize talk.wav --hint hall.wav --hint-image hall.png --checkpoint "
                     "runs/pretrain-soundscape-X --guidance 5")),
    Job("eval", "stylize", "percli.recipes.stylize_eval",
        "Soundscape stylization on held-out generated scenes: RT60 error (input / stylized / hint zeroed), mel "
        "distance, hint match", None, resumable=False, args=(
            Arg("checkpoint", ("--checkpoint",), "A `percli pretrain soundscape` run dir, checkpoint dir or "
                ".safetensors."),
            Arg("stylize.items", ("--items",), "Held-out cross-scene items."),
            Arg("stylize.steps", ("--steps",), "DDIM steps."),
            Arg("stylize.guidance_scale", ("--guidance",), "Classifier-free guidance on the hint (1 = off)."),
            Arg("stylize.estimator", ("--estimator",), "An rt60_estimator.safetensors to reuse (default: train "
                "one on the run's training utterances)."),
            Arg("stylize.vocoder", ("--vocoder",), "A `percli pretrain vocoder` run (default: Griffin-Lim)."),
            Arg("stylize.seed", ("--seed",), "Seed of the sampler."),
            Arg("device", ("--device",), "cuda or cpu (default: cuda when available)."),
        ), examples=("percli eval stylize --checkpoint runs/pretrain-soundscape-X --json",)),
    Job("translate", "", "percli.recipes.translate",
        "Translate sentences with a UMMT run, with or without the image they describe", resumable=False,
        keeps_run_dir=False, args=(
            Arg("texts", help="Sentences to translate.", many=True, metavar="TEXT"),
            Arg("input", ("--input",), "A text file, one sentence per line."),
            Arg("checkpoint", ("--checkpoint",), "A `percli pretrain ummt` run dir, checkpoint dir or .safetensors."),
            Arg("source", ("--from",), "Language of the sentences (en, de, ...)."),
            Arg("target", ("--to",), "Language to translate into."),
            Arg("image", ("--image",), "Features of the image they describe: a .npy [R, D] as the training data's."),
            Arg("beam", ("--beam",), "Beam size (1 = greedy)."),
        ), examples=('percli translate "a small red circle on the left" --checkpoint runs/pretrain-ummt-X --from en '
                     "--to de",
                     "percli translate --input captions.en --checkpoint runs/pretrain-ummt-X --from en --to de "
                     "--beam 4 --json")),
    Job("eval", "translation", "percli.recipes.translation_eval",
        "BLEU / chrF of a UMMT run on a parallel split, every direction with and without images, next to the "
        "word-by-word baseline", output_flag=True, resumable=False, args=(
            Arg("checkpoint", ("--checkpoint",), "A `percli pretrain ummt` run dir, checkpoint dir or .safetensors."),
            Arg("split", ("--split",), "The parallel split translated (<split>.<lang> captions)."),
            Arg("beam", ("--beam",), "Beam size (1 = greedy)."),
        ), examples=("percli eval translation --checkpoint runs/pretrain-ummt-X --json",
                     "percli eval translation --checkpoint runs/pretrain-ummt-X --beam 4 source=/data/multi30k "
                     "--split test_2016")),
    Job("eval", "inpaint", "percli.recipes.inpaint",
        "PSNR / SSIM of DiffMAE inpainting on the masked pixels of a folder (with masks), next to the mean-colour "
        "fill", "default", output_flag=True, resumable=False, args=_INPAINT, examples=(
            "percli eval inpaint /data/val --masks /data/val_masks --checkpoint runs/pretrain-diffmae-X --json",)),
    Job("embed", "", "percli.recipes.embed",
        "PE-AV audio, video, audio+video and text embeddings of a caption manifest into safetensors parts "
        "(batched, resumable, shard-parallel)", output_flag=True, args=(
            Arg("inputs", help="A caption manifest: captions.jsonl, or an AudioCaps / Clotho / VALOR / MSR-VTT-style "
                "CSV, TSV, JSON or JSONL (none: the embedded held-out clips).", many=True, metavar="MANIFEST"),
            Arg("model.checkpoint", ("--checkpoint",), "PE-AV weights: a release folder (config.json + "
                "model.safetensors + tokenizer.json) or a `percli pretrain pe-av` checkpoint."),
            Arg("modalities", ("--modalities",), "What to embed: audio, video, text (repeat; default all three).",
                many=True),
            Arg("media_root", ("--media-root",), "Folder of the manifest's relative media paths."),
            Arg("batch_size", ("--batch-size",), "Clips per forward."),
            Arg("part_size", ("--part-size",), "Clips per output part (the unit --resume skips)."),
        ), examples=("percli embed /data/valor/captions.jsonl --checkpoint /models/pe-av-large -o embeddings/valor",)),
    Job("detect", "events", "percli.recipes.detect_events",
        "Find when described sounds happen in audio/video files: PE-A-Frame text queries -> spans in seconds (JSON)",
        resumable=False, args=(
            Arg("inputs", help="Audio or video files (none: eight embedded held-out clips).", many=True,
                metavar="FILE"),
            Arg("text", ("--text", "-t"), "A text query, one per sound to find (repeat); default: the checkpoint's "
                "training queries.", many=True),
            Arg("model.checkpoint", ("--checkpoint",), "PE-A-Frame weights: a release folder (config.json + "
                "model.safetensors + tokenizer.json) or a `percli finetune pe-a-frame` checkpoint."),
            Arg("threshold", ("--threshold",), "Frame probability above which a frame is in a span (0.3)."),
            Arg("output", ("--output", "-o"), "Where to write the spans (default RUN_DIR/events.json); --overwrite "
                "replaces an existing file."),
        ), examples=('percli detect events street.wav --text "a dog barking" --text "a siren" --checkpoint '
                     "/models/pe-a-frame-large -o street_events.json",)),
    Job("eval", "sed", "percli.recipes.sed_eval",
        "Sound event detection scores of a PE-A-Frame model: segment/event F1 and frame AUROC on strong labels",
        resumable=False, examples=("percli eval sed model.checkpoint=/models/pe-a-frame-small "
                                   "data.source=desed/validation.tsv data.audio_root=desed/audio/validation",)),
]

# --- weights by name (percli download) ---
JOBS += [
    Job("download", "", "percli.models.download_job",
        "Fetch a model's release weights (or any hf-hub: spec) into the Hugging Face cache and print where",
        resumable=False, args=(
            Arg("name", help="A model name (its first release), model.tag (hiera_base_224.mae), or "
                "hf-hub:ORG/NAME (optionally /FILE and @REVISION). Releases: percli/models/pretrained.py.",
                metavar="NAME"),
            Arg("tag", ("--tag",), "Release tag of the model (default: its first)."),
        ), examples=("percli download hiera_base_224", "percli download dinov2_vits14 --tag lvd142m",
                     "percli download hf-hub:pyp1/VoiceCraft/encodec_4cb2048_giga.th")),
]

VERB_HELP = {
    "pretrain": "Self-supervised pretraining (MAE, ...).",
    "finetune": "Supervised finetuning of pretrained encoders.",
    "eval": "Evaluate checkpoints.",
    "curate": "Curate image-text data (MetaCLIP, CiT, MoDE, text quality).",
    "curate metaclip": "MetaCLIP 1 curation: match texts to metadata, count entries, balance with threshold t. "
                       "[bold]percli curate metaclip INPUTS... -m metadata.json[/] runs all three (no inputs: the "
                       "demo pool); the subcommands run one stage each.",
    "caption": "Write captions for image shards with a trained captioner.",
    "tts": "Speech editing and zero-shot TTS with VoiceCraft (official or percli weights).",
    "embed": "Embed audio, video and captions with PE-AV.",
    "inpaint": "Inpaint images or videos with a DiffMAE model.",
    "translate": "Translate sentences with a UMMT run (with or without an image).",
    "extract": "Extract per-second video features with a frozen encoder (the video-language recipes' input).",
    "detect": "Detect events in audio from text queries (PE-A-Frame).",
    "select": "Active learning: pick the pool points to label next. [bold]percli select --strategy margin --budget 100 "
              "--probs pool_probs.npy --labelled labelled.npy[/] queries a pool (the `run` subcommand); "
              "[bold]percli select simulate[/] compares strategies on a simulated labelling loop.",
}


def get_job(verb: str, method: str) -> Job:
    for job in JOBS:
        if job.verb == verb and job.method == method:
            return job
    known = ", ".join(job.name for job in JOBS)
    raise KeyError(f"no job {verb} {method}; available: {known}")


def find_method(method: str, verb: str | None = None) -> Job:
    """The job of a method name (for `show-config`); `verb` picks one when several verbs share it."""
    wanted = method.replace(" ", "-")  # `metaclip run` or `metaclip-run`; a top-level job by its verb
    matches = [job for job in JOBS if (job.method or job.verb).replace(" ", "-") == wanted and verb in (None, job.verb)]
    if not matches:
        known = ", ".join(sorted({job.method for job in JOBS}))
        raise KeyError(f"unknown method {method!r}{f' for {verb}' if verb else ''}; available: {known}")
    if len(matches) > 1:
        verbs = " or ".join(f"--verb {job.verb}" for job in matches)
        raise KeyError(f"{method} is a method of several verbs; add {verbs}")
    return matches[0]
