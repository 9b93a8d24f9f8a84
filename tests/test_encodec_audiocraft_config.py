"""Building percli's Encodec from an audiocraft compression config (the ``encodec``/``seanet``/``rvq`` sections)."""

from __future__ import annotations

import copy

import pytest

from percli.models.encodec import EncodecModel, kwargs_from_audiocraft_config

# audiocraft's encodec_large_nq4_s320 at 16 kHz (VoiceCraft's codec) with tiny widths, as xp.cfg holds it
CONFIG = {
    "encodec": {"autoencoder": "seanet", "quantizer": "rvq", "sample_rate": 16000, "channels": 1, "causal": False,
                "renormalize": False},
    "seanet": {"dimension": 8, "channels": 1, "causal": False, "n_filters": 4, "n_residual_layers": 1,
               "ratios": [8, 5, 4, 2], "activation": "ELU", "activation_params": {"alpha": 1.0},
               "norm": "weight_norm", "norm_params": {}, "kernel_size": 7, "residual_kernel_size": 3,
               "last_kernel_size": 7, "dilation_base": 2, "pad_mode": "constant", "true_skip": True, "compress": 2,
               "lstm": 2, "disable_norm_outer_blocks": 0,
               "decoder": {"trim_right_ratio": 1.0, "final_activation": None, "final_activation_params": None},
               "encoder": {}},
    "rvq": {"n_q": 4, "q_dropout": False, "bins": 16, "decay": 0.99, "kmeans_init": True, "kmeans_iters": 50,
            "threshold_ema_dead_code": 2},
}


def test_audiocraft_config_gives_the_codec_it_describes() -> None:
    kwargs = kwargs_from_audiocraft_config(CONFIG)
    assert kwargs == {"dimension": 8, "channels": 1, "causal": False, "n_filters": 4, "n_residual_layers": 1,
                      "ratios": [8, 5, 4, 2], "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 7,
                      "dilation_base": 2, "compress": 2, "lstm": 2, "sample_rate": 16000, "n_q": 4, "bins": 16}
    codec = EncodecModel(**kwargs)
    assert codec.frame_rate == 50 and codec.hop_length == 320 and codec.bandwidth == pytest.approx(0.8)


@pytest.mark.parametrize(("section", "key", "value", "named"), [
    ("seanet", "norm", "time_group_norm", "seanet.norm='time_group_norm'"),
    ("seanet", "pad_mode", "reflect", "seanet.pad_mode='reflect'"),
    ("encodec", "renormalize", True, "encodec.renormalize=True"),
    ("seanet", "encoder", {"n_filters": 8}, "seanet.encoder.n_filters=8"),
    ("seanet", "decoder", {"final_activation": "Tanh"}, "decoder.final_activation='Tanh'"),
])
def test_settings_percli_does_not_implement_are_named(section: str, key: str, value: object, named: str) -> None:
    config = copy.deepcopy(CONFIG)
    if isinstance(value, dict):
        config[section][key].update(value)
    else:
        config[section][key] = value
    with pytest.raises(ValueError, match="does not implement") as err:
        kwargs_from_audiocraft_config(config)
    assert named in str(err.value)
