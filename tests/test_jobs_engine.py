"""Every job of the registry has a tiny-run case in one group's test module, and every engine job's `--json`
(training recipes, their evaluations, rwr-gae) has the common schema with fractions for shares."""

import json

from typer.testing import CliRunner

from percli.cli import app
from percli.jobs import JOBS
from tests import test_jobs_captioning, test_jobs_curation, test_jobs_tools
from tests.conftest import TINY_CLS, TINY_MAE
from tests.summary_schema import assert_common_schema
from tests.test_altogether_recipe import TINY as ALTOGETHER
from tests.test_audio_recipes import CLS as AUDIO_CLS
from tests.test_audio_recipes import MAE as AUDIO_MAE
from tests.test_cit_recipe import TINY as CIT
from tests.test_diffmae import CLS as DIFFMAE_CLS
from tests.test_diffmae import TINY as DIFFMAE
from tests.test_dinov2_recipe import SHORT as DINOV2
from tests.test_flap import TINY as FLAP
from tests.test_mavil_pretrain import TINY as MAVIL
from tests.test_mmp import TINY as MMP
from tests.test_plm_recipe import TINY as PLM
from tests.test_video_text_recipes import SUPPORT, VIDEOCLIP
from tests.test_voicecraft_recipe import TINY as VOICECRAFT

runner = CliRunner()
STEPS = ["train.max_steps=2"]
CLIP = ["train.batch_size=8", "train.num_workers=0", "data.embedded_size=32", "optim.ref_batch_size=8"]
VLM = ["model.kwargs={bert_config: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
       "intermediate_size: 32}}", "data.embedded_size=40", "train.batch_size=4", "optim.ref_batch_size=4"]
PE_AV = ["data.embedded_size=20", "train.batch_size=4", "train.num_workers=0"]
DINOV2_FT = ["model.kwargs={img_size: 32, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2, init_values: 1.0}",
             "data.embedded_size=40", "train.num_workers=0", "train.batch_size=8"]

# training jobs first: the evaluation cases read their checkpoints ({hiera}, {clip})
CASES = {
    "pretrain hiera-mae": [*TINY_MAE, *STEPS, "recon_images=2"],
    "finetune hiera": [*TINY_CLS, *STEPS],
    "pretrain diffmae": [*DIFFMAE, *STEPS],
    "finetune diffmae": [*DIFFMAE_CLS, *STEPS],
    "pretrain audio-mae": [*AUDIO_MAE, *STEPS, "recon_clips=2"],
    "finetune audio-mae": [*AUDIO_CLS, *STEPS],
    "pretrain voicecraft": [*VOICECRAFT, *STEPS],
    "pretrain clip": [*CLIP, *STEPS],
    "pretrain flap": [*FLAP, *STEPS],
    "pretrain cit": [*CIT, "curation.every=1", *STEPS],
    "pretrain dinov2": [*DINOV2, *STEPS],
    "finetune dinov2": [*DINOV2_FT, *STEPS],
    "finetune altogether": [*ALTOGETHER, *STEPS],
    "eval classify": ["checkpoint={hiera}", "data.embedded_size=40", "train.num_workers=0"],
    "eval knn": ["model.checkpoint={hiera}", "data.embedded_size=40", "train.num_workers=0"],
    "eval linear-probe": ["model.checkpoint={hiera}", "data.embedded_size=40", "train.num_workers=0",
                          "epochs=2"],
    "eval dense": ["model.checkpoint={dinov2}", "data.embedded_size=8", "train.batch_size=4", *STEPS],
    "eval zero-shot": ["model.checkpoint={clip}", "data.embedded_size=20", "train.num_workers=0"],
    "pretrain pe-av": [*PE_AV, *STEPS],
    "eval retrieval": ["model.checkpoint={pe-av}", "data.embedded_size=20", "train.num_workers=0"],
    "finetune pe-a-frame": [*PE_AV, *STEPS],
    "finetune mavil": [*PE_AV, *STEPS],
    "pretrain mavil": [*MAVIL, *STEPS],
    "pretrain videoclip": [*VIDEOCLIP, *STEPS],
    "finetune videoclip": ["model.kwargs={max_video_len: 8, bert_config: {hidden_size: 16, num_hidden_layers: 1, "
                           "num_attention_heads: 2, intermediate_size: 32}}", "data.embedded_size=20",
                           "train.batch_size=4", "optim.ref_batch_size=4", *STEPS],
    "pretrain support-set": [*SUPPORT, *STEPS],
    "pretrain vlm": [*VLM, *STEPS],
    "pretrain mmp": [*MMP, *STEPS],
    "finetune plm": [*PLM, *STEPS],
    "finetune vlm": ["model.kwargs={max_video_len: 8, bert_config: {hidden_size: 16, num_hidden_layers: 1, "
                     "num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 32}}",
                     "data.embedded_size=20", "train.batch_size=4", "optim.ref_batch_size=4", *STEPS],
    "eval sed": ["model.checkpoint={pe-a-frame}", "data.embedded_size=20"],
    "detect events": ["--checkpoint", "{pe-a-frame}", "--text", "a dog barking"],
    "embed": ["--checkpoint", "{pe-av}", "embedded_size=4", "num_frames=2"],
    "extract features": ["{videos}", "--checkpoint", "{clip}"],
    "pretrain rwr-gae": ["--graph", "{graph}", "--labels", "{labels}", "--seeds", "1", "--epochs", "5"],
}
ELSEWHERE = {"download": "tests/test_hub.py::test_percli_download_prints_where_the_cached_release_is",
             "eval tts": "tests/test_tts_eval.py::test_eval_tts_on_embedded_utterances_counts_a_corrupt_file",
             "eval plm-videobench":
                 "tests/test_plm_videobench_eval.py::test_every_task_runs_end_to_end_with_an_http_judge",
             "inpaint": "tests/test_diffmae.py::test_inpaint_writes_completions_and_eval_scores_masked_pixels",
             "eval inpaint": "tests/test_diffmae.py::test_inpaint_writes_completions_and_eval_scores_masked_pixels",
             "chat": "tests/test_plm_chat.py::test_chat_prints_the_greedy_answer_of_model_generate",
             "pretrain soundscape": "tests/test_soundscape_jobs.py::test_two_stages_train_and_score",
             "tts stylize": "tests/test_soundscape_jobs.py::test_stylize_a_recording_with_a_video_hint",
             "eval stylize": "tests/test_soundscape_jobs.py::test_eval_stylize_scores_the_run",
             "pretrain vocoder": "tests/test_soundscape_jobs.py::test_vocoder_trains_and_stylize_uses_it",
             "pretrain mha-vse": "tests/test_mha_vse.py::test_pretrain_scores_retrieval_per_language_and_sts",
             "pretrain ummt": "tests/test_ummt.py::test_pretrain_trains_both_stages_and_scores_every_direction",
             "translate": "tests/test_ummt.py::test_translate_and_eval_translation_read_the_run",
             "eval translation": "tests/test_ummt.py::test_translate_and_eval_translation_read_the_run",
             "extract regions": "tests/test_extract_regions.py::test_extract_regions_writes_files_the_reader_loads",
             "finetune stmt": "tests/test_stmt_recipe.py::test_finetune_stmt_on_the_embedded_figures",
             "pretrain stmt": "tests/test_stmt_recipe.py::test_pretrain_stmt_then_finetune_from_it",
             "finetune amvc": "tests/test_amvc.py::test_finetune_amvc_adapts_and_the_source_only_baseline_runs",
             "finetune yt8m": "tests/test_yt8m_recipe.py::test_finetune_yt8m_trains_on_embedded_tfrecords",
             "eval gap": "tests/test_yt8m_recipe.py::test_eval_gap_scores_each_run_and_their_ensemble",
             "finetune av-fusion": "tests/test_av_fusion.py::test_finetune_av_fusion_on_the_embedded_one_event_clips",
             "eval adversarial": "tests/test_adversarial.py::test_eval_adversarial_writes_the_curve_and_summary"}


def test_every_job_of_the_registry_has_a_case_in_one_group():
    groups = [set(CASES), {f"curate {method}" for method in test_jobs_curation.CASES},
              {f"{verb} {method}" for verb, method, _ in test_jobs_captioning.JOBS}, set(test_jobs_tools.CASES),
              set(ELSEWHERE)]
    names = [name for group in groups for name in group]
    assert len(names) == len(set(names)), "a job is in two groups"
    assert set(names) == {job.name for job in JOBS}


def _graph(tmp_path):
    from tests.test_rwr_gae import planted_communities

    edges, labels = planted_communities()
    (tmp_path / "g.txt").write_text("".join(f"{u} {v}\n" for u, v in edges))
    (tmp_path / "labels.txt").write_text("".join(f"{x}\n" for x in labels))
    return {"graph": str(tmp_path / "g.txt"), "labels": str(tmp_path / "labels.txt")}


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def test_every_engine_job_prints_the_common_schema(tmp_path):
    from percli.core.data.av_events import make_av_events

    values = _graph(tmp_path)
    values["videos"] = str(make_av_events(tmp_path / "videos", 2, seed=1).parent / "clips")
    for name, args in CASES.items():
        run = tmp_path / name.replace(" ", "-")
        result = runner.invoke(app, [*name.split(), "--run-dir", str(run), "--json",
                                     *(_fill(a, values) for a in args)])
        assert result.exit_code == 0, (name, result.output[-3000:])
        summary = json.loads(result.stdout)
        assert_common_schema(summary)
        assert summary["status"] == "completed" and summary["run_dir"] == str(run), name
        assert json.loads((run / "summary.json").read_text()) == summary, name
        if name == "finetune hiera":
            values["hiera"] = summary["checkpoint"]
        if name == "pretrain clip":
            values["clip"] = summary["checkpoint"]
        if name == "pretrain dinov2":
            values["dinov2"] = summary["checkpoint"]
        if name in ("pretrain pe-av", "finetune pe-a-frame"):
            values[name.split()[1]] = summary["checkpoint"]
