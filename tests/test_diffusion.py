import math

import pytest
import torch

from percli.core.diffusion import (
    PARAMETERIZATIONS,
    drop_condition,
    make_schedule,
    predict_eps,
    predict_x0,
    q_sample,
    sample,
    training_target,
)


def cosine_abar(u: float, s: float = 0.008) -> float:
    """Nichol & Dhariwal's closed form abar(u) = f(u) / f(0), written out independently of the module."""
    f = lambda v: math.cos((v + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(u) / f(0)


@pytest.mark.parametrize("name", ["linear", "cosine", "diffmae"])
@pytest.mark.parametrize("num_steps", [100, 1000])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(name, num_steps):
    abar = make_schedule(name, num_steps).alphas_cumprod
    assert abar.shape == (num_steps,)
    assert (abar > 0).all() and (abar <= 1).all()
    assert (abar[1:] < abar[:-1]).all()


@pytest.mark.parametrize("num_steps, first_beta, last_beta", [(1000, 1e-4, 0.02), (100, 1e-3, 0.2)])
def test_linear_schedule_scales_ddpm_betas_to_num_steps(num_steps, first_beta, last_beta):
    schedule = make_schedule("linear", num_steps)
    assert schedule.betas[0].item() == pytest.approx(first_beta, rel=1e-6)
    assert schedule.betas[-1].item() == pytest.approx(last_beta, rel=1e-6)
    # Two steps by hand: (1 - beta_0)(1 - beta_1), beta_1 = beta_0 + (beta_T - beta_0) / (T - 1).
    beta_1 = first_beta + (last_beta - first_beta) / (num_steps - 1)
    assert schedule.alphas_cumprod[1].item() == pytest.approx((1 - first_beta) * (1 - beta_1), rel=1e-6)


def test_linear_schedule_at_1000_steps_matches_hand_value():
    assert make_schedule("linear").alphas_cumprod[1].item() == pytest.approx(0.99978009207, rel=1e-7)


@pytest.mark.parametrize("t", [1, 250, 500, 750, 999])
def test_cosine_schedule_follows_closed_form(t):
    abar = make_schedule("cosine", 1000).alphas_cumprod
    assert abar[t - 1].item() == pytest.approx(cosine_abar(t / 1000), rel=1e-5)


def test_cosine_schedule_hand_values_and_clipped_last_beta():
    schedule = make_schedule("cosine", 1000)
    assert schedule.alphas_cumprod[499].item() == pytest.approx(0.49384359, rel=1e-6)  # abar(1/2)
    assert schedule.alphas_cumprod[249].item() == pytest.approx(0.84701216, rel=1e-6)  # abar(1/4)
    assert schedule.betas[-1].item() == pytest.approx(0.999)
    assert schedule.betas.max().item() <= 0.999 + 1e-7


@pytest.mark.parametrize("rho", [0.8, 0.5, 1.5])
@pytest.mark.parametrize("t", [1, 100, 500, 900])
def test_diffmae_schedule_raises_cosine_noise_variance_to_rho(rho, t):
    abar = make_schedule("diffmae", 1000, rho=rho).alphas_cumprod
    # abs: abar is stored in float32, whose resolution near 1 is ~6e-8.
    assert 1 - abar[t - 1].item() == pytest.approx((1 - cosine_abar(t / 1000)) ** rho, rel=1e-4, abs=1e-7)


def test_diffmae_schedule_hand_value_and_default_rho():
    # 1 - (1 - 0.49384359)^0.8 at u = 1/2, with the default rho = 0.8.
    assert make_schedule("diffmae").alphas_cumprod[499].item() == pytest.approx(0.42000027, rel=1e-6)


def test_diffmae_schedule_is_noisier_than_cosine_and_equals_it_at_rho_one():
    cosine = make_schedule("cosine", 200)
    assert (make_schedule("diffmae", 200).alphas_cumprod[:-1] < cosine.alphas_cumprod[:-1]).all()
    assert torch.equal(make_schedule("diffmae", 200, rho=1.0).betas, cosine.betas)


@pytest.mark.parametrize("name", ["linear", "cosine", "diffmae"])
def test_posterior_variance_is_fixed_small_and_zero_at_the_last_step(name):
    schedule = make_schedule(name, 100)
    assert schedule.posterior_variance[0].item() == 0.0  # the step out of t = 0 adds no noise
    beta, abar, abar_prev = (v[50].item() for v in (schedule.betas, schedule.alphas_cumprod,
                                                    schedule.alphas_cumprod_prev))
    assert abar_prev == schedule.alphas_cumprod[49].item()
    assert schedule.posterior_variance[50].item() == pytest.approx(beta * (1 - abar_prev) / (1 - abar), rel=1e-5)


@pytest.mark.parametrize("name, num_steps, opts, named", [
    ("sigmoid", 1000, {}, "sigmoid"),
    ("cosine", 1000, {"rho": 0.5}, "rho"),
    ("linear", 1000, {"s": 0.1}, "s"),
    ("diffmae", 1000, {"rho": 0.0}, "rho"),
    ("cosine", 1000, {"s": -0.1}, "s"),
    ("linear", 10, {}, "num_steps"),
])
def test_bad_schedule_name_or_option_raises_naming_it(name, num_steps, opts, named):
    with pytest.raises(ValueError, match=named):
        make_schedule(name, num_steps, **opts)


@pytest.mark.parametrize("t", [0, 300, 999])
def test_q_sample_moments_match_forward_marginal(t):
    schedule = make_schedule("cosine")
    n = 100_000
    x0 = torch.tensor([1.5, -0.5, 0.0, 2.0]).expand(n, 4)
    noise = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    x_t = q_sample(x0, torch.full((n,), t), noise, schedule)
    abar = schedule.alphas_cumprod[t].item()
    # Five standard errors of the mean (sigma / sqrt(n)) and of the variance (var * sqrt(2 / n)).
    assert torch.allclose(x_t.mean(0), math.sqrt(abar) * x0[0], atol=5 * math.sqrt((1 - abar) / n))
    assert torch.allclose(x_t.var(0), torch.full((4,), 1 - abar), atol=5 * (1 - abar) * math.sqrt(2 / n))


@pytest.mark.parametrize("name", ["linear", "cosine", "diffmae"])
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_each_parameterization_target_converts_back_to_x0_and_eps(name, parameterization):
    schedule = make_schedule(name)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(64, 3, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(64, 3, 5, generator=gen, dtype=torch.float64)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (62,), generator=gen)])
    x_t = q_sample(x0, t, eps, schedule)
    target = training_target(x0, eps, t, schedule, parameterization)
    assert torch.allclose(predict_x0(target, x_t, t, schedule, parameterization), x0, atol=1e-5)
    assert torch.allclose(predict_eps(target, x_t, t, schedule, parameterization), eps, atol=1e-5)


def test_v_target_is_salimans_ho_velocity():
    schedule = make_schedule("linear")
    x0, eps, t = torch.tensor([[2.0]]), torch.tensor([[-1.0]]), torch.tensor([400])
    abar = schedule.alphas_cumprod[400].item()
    expected = math.sqrt(abar) * -1.0 - math.sqrt(1 - abar) * 2.0
    assert training_target(x0, eps, t, schedule, "v").item() == pytest.approx(expected, rel=1e-6)


def test_unknown_parameterization_raises_naming_it():
    with pytest.raises(ValueError, match="parameterization='score'"):
        predict_x0(torch.zeros(1), torch.zeros(1), torch.tensor([0]), make_schedule("linear"), "score")


def shrink(x, t):
    """A deterministic stand-in model predicting x0 = x_t / 2."""
    return 0.5 * x


def test_ddim_eta0_is_reproducible_from_the_seed_and_seeds_differ():
    schedule = make_schedule("cosine", 100)
    run = lambda seed: sample(shrink, (2, 3, 4), schedule, steps=10,  # noqa: E731
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_ddim_eta0_is_deterministic_given_the_start_noise():
    schedule = make_schedule("cosine", 100)
    x_T = torch.randn(2, 6, generator=torch.Generator().manual_seed(2))
    first = sample(shrink, (2, 6), schedule, steps=7, x_T=x_T, generator=torch.Generator().manual_seed(3))
    second = sample(shrink, (2, 6), schedule, steps=7, x_T=x_T, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 10, 0.0), ("ddim", 25, 1.0), ("ddpm", None, 0.0)])
def test_samplers_with_an_oracle_denoiser_end_at_the_data_point(parameterization, sampler, steps, eta):
    schedule = make_schedule("linear", 100)
    point = torch.tensor([0.7, -1.2, 0.3])

    def oracle(x_t, t):
        # The exact model output for a data set holding only `point`: its eps is implied by x_t.
        abar = schedule.alphas_cumprod[t].unsqueeze(1)
        eps = (x_t - abar.sqrt() * point) / (1 - abar).sqrt()
        return {"x0": point.expand_as(x_t), "eps": eps, "v": abar.sqrt() * eps - (1 - abar).sqrt() * point}[
            parameterization]

    out = sample(oracle, (4, 3), schedule, steps=steps, sampler=sampler, eta=eta, parameterization=parameterization,
                 generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, point.expand(4, 3), atol=1e-4)


def test_guidance_scale_one_uses_the_conditional_model_exactly_and_never_calls_uncond():
    schedule = make_schedule("cosine", 50)

    def uncond(x, t):
        raise AssertionError("uncond_fn must not be called at guidance_scale=1")

    for sampler, steps in [("ddim", 8), ("ddpm", None)]:
        kwargs = {"steps": steps, "sampler": sampler, "eta": 0.5}
        plain = sample(shrink, (3, 4), schedule, generator=torch.Generator().manual_seed(6), **kwargs)
        guided = sample(shrink, (3, 4), schedule, generator=torch.Generator().manual_seed(6), uncond_fn=uncond,
                        guidance_scale=1.0, **kwargs)
        assert torch.equal(plain, guided)


@pytest.mark.parametrize("scale, expected", [(3.0, 0.5 + 3.0 * (2.0 - 0.5)), (0.0, 0.5), (-1.0, 0.5 - 1.5)])
def test_guidance_combines_outputs_as_uncond_plus_scale_times_difference(scale, expected):
    # One DDIM step from T - 1 to the clean sample returns the guided x0 prediction itself.
    out = sample(lambda x, t: torch.full_like(x, 2.0), (2, 3), make_schedule("cosine", 50), steps=1,
                 guidance_scale=scale, uncond_fn=lambda x, t: torch.full_like(x, 0.5),
                 generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, torch.full((2, 3), expected))


def test_guidance_without_uncond_fn_raises():
    with pytest.raises(ValueError, match="uncond_fn"):
        sample(shrink, (1, 2), make_schedule("cosine", 10), guidance_scale=2.0)


@pytest.mark.parametrize("kwargs, named", [
    ({"sampler": "euler"}, "sampler='euler'"),
    ({"sampler": "ddpm", "steps": 5}, "steps=5"),
    ({"steps": 0}, "steps"),
    ({"eta": -0.5}, "eta"),
    ({"parameterization": "score"}, "parameterization"),
    ({"x_T": torch.zeros(3, 2)}, "x_T"),
])
def test_sample_rejects_bad_arguments_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        sample(shrink, (1, 2), make_schedule("cosine", 10), **kwargs)


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", None)])
def test_known_entries_of_the_sample_equal_the_known_values(sampler, steps):
    gen = torch.Generator().manual_seed(8)
    values = torch.randn(2, 1, 6, 6, generator=gen)
    mask = torch.rand(1, 1, 6, 6, generator=gen) < 0.5  # broadcast over the batch
    seen_known = []

    def model(x_t, t):
        seen_known.append(x_t[mask.expand_as(x_t)])
        return 0.5 * x_t

    schedule = make_schedule("cosine", 40)
    out = sample(model, (2, 1, 6, 6), schedule, steps=steps, sampler=sampler, generator=gen, known=(values, mask))
    known = mask.expand_as(out)
    assert torch.equal(out[known], values[known])
    assert not torch.allclose(out[~known], values[~known], atol=0.1)
    # The last model call (t = 0) saw the known values forward-noised to level 0: within 5 noise stds.
    abar = schedule.alphas_cumprod[0].item()
    assert torch.allclose(seen_known[-1], math.sqrt(abar) * values[known], atol=5 * math.sqrt(1 - abar))


def test_drop_condition_keeps_all_at_p0_and_drops_all_at_p1():
    cond = torch.randn(16, 4, generator=torch.Generator().manual_seed(9))
    kept, dropped = drop_condition(cond, 0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kept, cond) and not dropped.any()
    nulled, dropped = drop_condition(cond, 1.0, generator=torch.Generator().manual_seed(0))
    assert dropped.all() and torch.equal(nulled, torch.zeros_like(cond))


@pytest.mark.parametrize("null", [None, torch.tensor([1.0, -2.0, 3.0, 0.5])])
def test_drop_condition_drops_about_p_of_rows_and_replaces_them_with_the_null_value(null):
    cond = torch.randn(4000, 4, generator=torch.Generator().manual_seed(10))
    out, dropped = drop_condition(cond, 0.5, generator=torch.Generator().manual_seed(11), null=null)
    assert abs(dropped.float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / 4000)
    expected_null = torch.zeros(4) if null is None else null
    assert torch.equal(out[dropped], expected_null.expand(int(dropped.sum()), 4))
    assert torch.equal(out[~dropped], cond[~dropped])
    again, dropped_again = drop_condition(cond, 0.5, generator=torch.Generator().manual_seed(11), null=null)
    assert torch.equal(dropped, dropped_again) and torch.equal(out, again)


def test_drop_condition_null_class_index_for_label_conditions():
    labels = torch.arange(8)
    out, dropped = drop_condition(labels, 1.0, null=1000)
    assert dropped.all() and torch.equal(out, torch.full((8,), 1000))


def test_drop_condition_rejects_probability_outside_unit_interval():
    with pytest.raises(ValueError, match="p must be"):
        drop_condition(torch.zeros(2, 3), 1.5)
