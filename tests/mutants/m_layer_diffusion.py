"""LayerDiffusion's mechanism breakages (papers/layerdiffusion.txt, Eq. 1-8; METHODS.md section 4).

Each is killed through `run` by tests/test_layer_diffusion_mechanisms.py (listed first, so pytest -x
stops there) or by the run-level contract tests of tests/test_layer_diffusion.py.
"""
from tests.mutants import Mutant

TESTS = ("tests/test_layer_diffusion_mechanisms.py", "tests/test_layer_diffusion.py")
F_RUN = "engine/methods/layer_diffusion.py"
F_LT = "engine/core/layered_training.py"
F_LORA = "engine/core/lora.py"

MUTANTS = [
    # Eq. 1: the training inputs are the noised latents
    Mutant("layer_diffusion.eq1-noise-scale-wrong", F_LT,
           "x_t = a.sqrt() * x0.float() + (1 - a).sqrt() * noise", "x_t = a.sqrt() * x0.float() + (1 - a) * noise",
           "Eq. 1 (DDPM forward process): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps"),
    # Eq. 2: layered controlled optimisation
    Mutant("layer_diffusion.eq2-masked-loss-unmasked", F_LT,
           "err = (pred.float() - target.float()) ** 2 * mask", "err = (pred.float() - target.float()) ** 2",
           "Eq. 2/4/5: the diffusion loss counts only the masked region"),
    Mutant("layer_diffusion.eq2-e_b-fitted-on-subject-region", F_RUN,
           "optimize_embeddings(unet, scheduler, x_photo, x_ref, m_subject, m_background, e_a0, e_b0,",
           "optimize_embeddings(unet, scheduler, x_photo, x_ref, m_background, m_subject, e_a0, e_b0,",
           "Eq. 2: e_a on the photo's subject region, e_b on the reference's background (masks swapped)"),
    Mutant("layer_diffusion.eq2-background-is-subject-mask", F_RUN,
           "m_background = 1.0 - to_latent(m_ref, h, w, device)", "m_background = to_latent(m_ref, h, w, device)",
           "Eq. 2/5: the background region is 1 - M_r"),
    Mutant("layer_diffusion.eq2-embeddings-swapped", F_LT,
           "emb = torch.cat([e_a, e_b]).to(dtype)", "emb = torch.cat([e_b, e_a]).to(dtype)",
           "Eq. 2: e_a conditions the photo, e_b the reference (wrong tensor)"),
    Mutant("layer_diffusion.eq2-e_b-not-optimised", F_LT,
           "opt = torch.optim.Adam([e_a, e_b], lr=lr)", "opt = torch.optim.Adam([e_a], lr=lr)",
           "Eq. 2: e_a and e_b are optimised together"),
    # Eq. 3
    Mutant("layer_diffusion.eq3-alpha-ignored", F_RUN,
           "e_opt = interpolate(e_a, e_b, alpha)  # Eq. 3", "e_opt = interpolate(e_a, e_b, 0.7)  # Eq. 3",
           "Eq. 3: e_opt = alpha e_a + (1 - alpha) e_b with the user's alpha"),
    Mutant("layer_diffusion.eq3-weights-inverted", F_LT,
           "return alpha * e_a + (1.0 - alpha) * e_b", "return (1.0 - alpha) * e_a + alpha * e_b",
           "Eq. 3: alpha weights e_a"),
    # Eq. 4-6: layered diffusion fine-tuning
    Mutant("layer_diffusion.eq4-tuned-at-text-encoder-embedding", F_RUN,
           "x_photo, x_ref, m_subject, m_background, e_opt,", "x_photo, x_ref, m_subject, m_background, e_a0,",
           "Eq. 4-5: the UNet is fine-tuned at the fixed e_opt"),
    Mutant("layer_diffusion.eq5-bg-loss-on-subject-region", F_LT,
           "l_bg = masked_mse(eps[1:], noise[1:], m_background)",
           "l_bg = masked_mse(eps[1:], noise[1:], 1 - m_background)",
           "Eq. 5: L_bg on (1 - M_r) of the reference"),
    Mutant("layer_diffusion.eq6-lambdas-ignored", F_LT,
           "total = lambda1 * l_obj + lambda2 * l_bg  # Eq. 6", "total = l_obj + l_bg  # Eq. 6",
           "Eq. 6: lambda1 L_obj + lambda2 L_bg"),
    Mutant("layer_diffusion.eq6-lambdas-not-passed", F_RUN,
           "lambda1, lambda2, tune_steps, tune_lr, train_gen", "2.0, 1.0, tune_steps, tune_lr, train_gen",
           "Eq. 6: the user's lambda1, lambda2 reach the fine-tuning"),
    # Eq. 8: iterative guidance with the optimised embeddings and the fine-tuned UNet
    Mutant("layer_diffusion.eq8-not-alternating", F_RUN,
           "cond = cond_a if use_a else cond_opt", "cond = cond_opt",
           "Eq. 8: e_a on even t, e_opt on odd t"),
    Mutant("layer_diffusion.eq8-parity-inverted", F_RUN,
           "cond = cond_a if use_a else cond_opt", "cond = cond_opt if use_a else cond_a",
           "Eq. 8: e_a on even t (not odd)"),
    Mutant("layer_diffusion.eq8-schedule-parity-inverted", F_RUN,
           "return (steps - step_index) % 2 == 0", "return (steps - step_index) % 2 == 1",
           "Eq. 8: the schedule says e_a when t = steps - i is even"),
    Mutant("layer_diffusion.eq8-text-encoder-embeddings", F_RUN,
           "cond_a, cond_opt = e_a.to(dtype), e_opt.to(dtype)",
           "cond_a, cond_opt = e_a0.to(dtype), interpolate(e_a0, e_b0, alpha).to(dtype)",
           "Eq. 3/8: sampling uses the optimised embeddings, not the text encoder's"),
    Mutant("layer_diffusion.lora-removed-before-sampling", F_RUN,
           '            with torch.no_grad(), amp, log.stage("sampling"):',
           '            stack.close()\n            with torch.no_grad(), amp, log.stage("sampling"):',
           "Eq. 8 with the fine-tuned model: the LoRA adapter samples"),
    Mutant("layer_diffusion.full-copy-not-used-for-sampling", F_RUN,
           "eps = S.predict_noise(tuned, x, t, cond, log.counter, uncond=uncond, cfg=cfg)",
           "eps = S.predict_noise(unet, x, t, cond, log.counter, uncond=uncond, cfg=cfg)",
           "Eq. 8 with the fine-tuned model: the full fine-tune's private copy samples"),
    # the generated reference O_r (no reference given)
    Mutant("layer_diffusion.generated-reference-from-t_a", F_RUN,
           "cond_b = e_b0.to(dtype)", "cond_b = e_a0.to(dtype)",
           "O_r generated from T_b (the background text), so no second subject appears"),
    Mutant("layer_diffusion.generated-reference-keeps-subject-mask", F_RUN,
           "m_ref = np.zeros_like(m_photo)", "m_ref = m_photo",
           "Eq. 2/5 with a generated O_r: all of it is background (1 - M_r = 1)"),
    # the cached UNet is left as it was
    Mutant("layer_diffusion.adapter-not-removed", F_LORA,
           "        remove_adapter(model, name)\n        if not _tuner_layers(model)",
           "        pass\n        if not _tuner_layers(model)",
           "Sec. 3.2.2 via LoRA: adapters are removed afterwards, also on failure"),
]
