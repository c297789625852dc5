"""pix2pix-zero's mechanism breakages (papers/pix2pix-zero.txt: Sec. 3.1 Eq. 3 and L_auto, Sec. 3.2,
Sec. 3.3 Eq. 4-5 and Algorithm 1), each with the run-level test in
tests/test_pix2pix_zero_mechanisms.py that is meant to kill it (the harness runs the whole file)."""
from tests.mutants import Mutant

TESTS = ("tests/test_pix2pix_zero_mechanisms.py",)
RUN = "engine/methods/pix2pix_zero.py"
AUTO = "engine/core/autocorr.py"
DIRS = "engine/methods/p2pz_directions.py"
L_AUTO = "grad, = torch.autograd.grad(l_pair + reg_lambda * l_kl, var)"

MUTANTS = [
    # -- Sec. 3.1: regularised inversion, L_auto = L_pair + lambda L_KL (Eq. 3) --------------------------
    Mutant("pix2pix_zero.lauto-lambda-ignored", AUTO, L_AUTO, L_AUTO.replace("reg_lambda * l_kl", "l_kl"),
           "Sec. 3.1: lambda of L_auto ignored (test_lambda_slider_pulls_the_noise_towards_unit_gaussian)"),
    Mutant("pix2pix_zero.lauto-kl-dropped", AUTO, L_AUTO, L_AUTO.replace("l_pair + reg_lambda * l_kl", "l_pair"),
           "Sec. 3.1: L_KL dropped from L_auto (test_lambda_slider_pulls_the_noise_towards_unit_gaussian)"),
    Mutant("pix2pix_zero.lauto-pair-dropped", AUTO, L_AUTO, L_AUTO.replace("l_pair + ", "0 * l_pair + "),
           "Eq. 3: L_pair dropped from L_auto (test_pair_term_alone_lowers_the_autocorrelation)"),
    Mutant("pix2pix_zero.lauto-one-iteration", AUTO, "for _ in range(iters):", "for _ in range(1):",
           "Sec. 3.1: 5 gradient iterations per inversion step become 1 (test_more_iterations_regularise_more)"),
    Mutant("pix2pix_zero.lauto-offsets-fixed", AUTO, "offsets = draw_offsets(shapes, generator)",
           "offsets = [(1, 1)] * len(shapes)",
           "Eq. 3: random roll offsets per iteration replaced by delta = 1 (test_seed_draws_the_roll_offsets)"),
    Mutant("pix2pix_zero.lauto-pyramid-one-level", AUTO,
           "while min(levels[-1].shape[-2] // 2, levels[-1].shape[-1] // 2) >= floor:", "while False:",
           "Eq. 3: the pyramid {eta^p} reduced to eta^0 (test_run_inversion_is_section_3_1_written_out)"),
    Mutant("pix2pix_zero.lauto-step-sign", AUTO, "eta = (var - scale * grad).detach()",
           "eta = (var + scale * grad).detach()",
           "Sec. 3.1: gradient ascent on L_auto (test_regularised_inverted_noise_has_less_autocorrelation)"),
    Mutant("pix2pix_zero.regulariser-not-called", RUN,
           "regularize = make_regularizer(reg_lambda, reg_iters, generator, record) if reg_iters > 0 else None",
           "regularize = None",
           "Sec. 3.1: run inverts without the regulariser (test_regularised_inverted_noise_has_less_autocorrelation)"),
    Mutant("pix2pix_zero.inversion-without-caption", RUN,
           "x_inv = invert(sd, scheduler, x0, cond, steps,", "x_inv = invert(sd, scheduler, x0, cond_edit, steps,",
           "Sec. 3.1/Fig. 3: the inversion is guided by the caption c, not c_edit "
           "(test_run_inversion_is_section_3_1_written_out)"),
    # -- Sec. 3.2: edit direction and c_edit = c + Delta c_edit -----------------------------------------
    Mutant("pix2pix_zero.direction-sign", RUN, "cond_edit = cond + direction.delta", "cond_edit = cond - direction.delta",
           "Sec. 3.3: c_edit = c - Delta c (test_edit_without_guidance_is_cfg_sampling_with_c_plus_delta)"),
    Mutant("pix2pix_zero.direction-not-added", RUN, "cond_edit = cond + direction.delta",
           "cond_edit = cond + 0 * direction.delta",
           "Sec. 3.3: Delta c_edit not added (test_edit_without_guidance_is_cfg_sampling_with_c_plus_delta)"),
    Mutant("pix2pix_zero.direction-sum-not-mean", DIRS, "return total / len(sentences)", "return total",
           "Sec. 3.2: bank embedding summed, not averaged (test_direction_in_the_run_is_the_mean_embedding_difference)"),
    # -- Sec. 3.3, Algorithm 1: reference maps and cross-attention guidance (Eq. 4-5) ----------------------
    Mutant("pix2pix_zero.xa-ref-first-step", RUN, "ref = maps[i]", "ref = maps[0]",
           "Algorithm 1: every step guided towards M_ref of the first step, not M_ref(t) "
           "(test_zero_direction_guidance_is_a_no_op_at_every_step)"),
    Mutant("pix2pix_zero.xa-uncond-half", RUN, "cond_half = probs[-1]", "cond_half = probs[0]",
           "Eq. 5: maps recorded / compared on the unconditional half of the CFG batch "
           "(test_xa_loss_is_measured_on_the_conditional_half)"),
    Mutant("pix2pix_zero.reference-from-edit-embedding", RUN,
           "x_rec, maps = reconstruct(sd, scheduler, x_inv, cond, steps,",
           "x_rec, maps = reconstruct(sd, scheduler, x_inv, cond_edit, steps,",
           "Algorithm 1: M_ref recorded with c_edit instead of c "
           "(test_edit_without_guidance_is_cfg_sampling_with_c_plus_delta)"),
    Mutant("pix2pix_zero.xa-weight-ignored", RUN, "x = (x - xa_guidance * grad).detach()", "x = (x - grad).detach()",
           "Algorithm 1: lambda_xa ignored (test_guidance_weight_moves_the_edit_monotonically)"),
    Mutant("pix2pix_zero.xa-step-sign", RUN, "x = (x - xa_guidance * grad).detach()",
           "x = (x + xa_guidance * grad).detach()",
           "Algorithm 1: x_t + lambda_xa Delta x_t, ascent on L_xa "
           "(test_every_guidance_step_lowers_the_cross_attention_loss)"),
    # -- CFG on the edit pass and its unconditional prompt ------------------------------------------------
    Mutant("pix2pix_zero.edit-cfg-ignored", RUN, "uncond=uncond, cfg=cfg)", "uncond=uncond, cfg=1.0)",
           "App. D: CFG on the edit pass ignored (test_cfg_scale_moves_the_edit_monotonically)"),
    Mutant("pix2pix_zero.uncond-empty-prompt", RUN, "uncond = cond if negative is None else",
           "uncond = S.encode_prompts(sd, ['']).float() if negative is None else",
           "official script: the caption is CFG's negative prompt "
           "(test_zero_direction_without_guidance_reproduces_the_reconstruction)"),
    # -- the inversion cache ---------------------------------------------------------------------------
    Mutant("pix2pix_zero.cache-key-no-caption", RUN, "key = (image_hash(image), caption, steps,",
           "key = (image_hash(image), steps,",
           "cache per (image, caption, steps): stale inversion for a new caption "
           "(test_cache_key_holds_caption_and_steps)"),
    Mutant("pix2pix_zero.cache-key-no-steps", RUN, "key = (image_hash(image), caption, steps,",
           "key = (image_hash(image), caption,",
           "cache per (image, caption, steps): stale inversion for new steps (test_cache_key_holds_caption_and_steps)"),
]
