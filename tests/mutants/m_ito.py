"""ITO's mechanism breakages (papers/ito.txt, Eq. 1-7 and Fig. 1), each guarded by a run-level test
of tests/test_ito_mechanisms.py (listed first, so pytest -x stops on it), with tests/test_ito.py after."""
from tests.mutants import Mutant

TESTS = ("tests/test_ito_mechanisms.py", "tests/test_ito.py")
F_OPT = "engine/core/ito_optim.py"
F_RUN = "engine/methods/ito.py"
F_MASK = "engine/core/ito_mask.py"

MUTANTS = [
    # -- Eq. 6: the weighted sum of the two losses ------------------------------------------------------------
    Mutant("ito.eq6-lambda-dropped", F_OPT, 'terms.append(("preservation", lam,', 'terms.append(("preservation", 1.0,',
           "Eq. 6: lambda weights the preservation loss"),
    Mutant("ito.eq6-one-minus-lambda-dropped", F_OPT, 'terms.append(("guidance", 1.0 - lam,',
           'terms.append(("guidance", 1.0,', "Eq. 6: (1 - lambda) weights the guidance loss"),
    Mutant("ito.eq6-lambda-before-adam", F_OPT, "step = step + weight * moments.direction(grad)",
           "step = step + moments.direction(weight * grad)",
           "Eq. 6: lambda weighted before Adam's per-element normalisation, which cancels it (issue 14's bug)"),
    Mutant("ito.eq6-k-ignored", F_OPT, "for _ in range(int(k)):", "for _ in range(1):",
           "Eq. 3/6: k gradient steps per update"),
    Mutant("ito.eq6-lr-ignored", F_OPT, "z = z - lr * step", "z = z - 0.1 * step",
           "Eq. 3/6: the learning rate gamma"),
    Mutant("ito.t_u-ignored", F_OPT, "if i < t_u and k > 0:", "if k > 0:",
           "Sec. 3.2: updates only during the first t_u decoding steps"),
    # -- Eq. 4: preservation outside the mask, towards the photo's inversion --------------------------------------
    Mutant("ito.eq4-mask-inverted", F_RUN, "keep = 1.0 - mask", "keep = mask",
           "Eq. 4: preservation acts outside the edit mask, not inside"),
    Mutant("ito.eq4-loss-mask-inverted", F_OPT, "return ((keep * (y - x)) ** 2).sum()",
           "return (((1 - keep) * (y - x)) ** 2).sum()", "Eq. 4: the loss's own mask inverted"),
    Mutant("ito.eq4-targets-misaligned", F_RUN, "targets = [traj[n_enc - i].float() for i in range(n_enc)]",
           "targets = [traj[i].float() for i in range(n_enc)]",
           "Eq. 4: y_t is pulled to x_t of its own timestep (the inversion read backwards)"),
    Mutant("ito.eq2-inversion-under-c-edit", F_RUN, "traj = ddim_invert(sd, scheduler, x0, cond0, steps",
           "traj = ddim_invert(sd, scheduler, x0, cond_e, steps", "Eq. 2: x_t is the inversion under C_0"),
    # -- Eq. 5: the guidance image's latents g_t ---------------------------------------------------------------
    Mutant("ito.eq5-no-guidance", F_RUN, "targets, keep, lam, t_u_eff, k, lr, guides=guides,",
           "targets, keep, lam, t_u_eff, k, lr, guides=None,", "Eq. 5: the final edit never sees g_t"),
    Mutant("ito.eq5-guides-misaligned", F_RUN, "guides = [gtraj[n_enc - i].float() for i in range(n_enc)]",
           "guides = [gtraj[i].float() for i in range(n_enc)]", "Eq. 5: g_t of another timestep"),
    Mutant("ito.eq5-guidance-inverted-under-c0", F_RUN, "gtraj = ddim_invert(sd, scheduler, g0, cond_e,",
           "gtraj = ddim_invert(sd, scheduler, g0, cond0,",
           "Eq. 5: g_t is the guidance image's inversion under C_EDIT"),
    # -- Fig. 1a: the guidance pass ------------------------------------------------------------------------------
    Mutant("ito.guidance-from-inversion", F_RUN, "start = S.add_noise(scheduler, x0, noise, ts[0])",
           "start = traj[n_enc].float()", "Fig. 1a: the guidance image starts from random-noise (SDEdit) encoding"),
    Mutant("ito.guidance-pass-not-lambda-one", F_RUN,
           "targets, keep, 1.0, t_u_eff, k, lr, on_step=step_logger(\"guidance\")",
           "targets, keep, lam, t_u_eff, k, lr, on_step=step_logger(\"guidance\")",
           "Fig. 1a: the guidance pass is ITO with lambda = 1 (preservation only)"),
    Mutant("ito.lambda-one-still-guides", F_RUN, "if lam < 1.0:\n            with log.stage(\"guidance\"):",
           "if True:\n            with log.stage(\"guidance\"):", "Sec. 3.2: lambda = 1 skips the guidance image"),
    # -- Fig. 1b: the final edit ---------------------------------------------------------------------------------
    Mutant("ito.edit-from-noise", F_RUN, "y0 = ito_decode(unet, scheduler, traj[n_enc].float(), ts,",
           "y0 = ito_decode(unet, scheduler, S.add_noise(scheduler, x0, S.randn(tuple(x0.shape), gen, device, "
           "torch.float32), ts[0]), ts,", "Fig. 1b: the final edit starts from the DDIM inversion x_{t_E}"),
    Mutant("ito.t_E-ignored", F_RUN, "ts = S.sdedit_timesteps(scheduler, steps, ratio, device)",
           "ts = S.sdedit_timesteps(scheduler, steps, 1.0, device)", "Sec. 3.2: the encoding level t_E (ratio)"),
    Mutant("ito.control-edit-is-source", F_RUN, "control_e = _control(models, layouts, 2, device, dtype, scale)",
           "control_e = _control(models, layouts, 1, device, dtype, scale)",
           "C_EDIT's ControlNet image drives the guidance pass and the edit"),
    Mutant("ito.control-source-is-edit", F_RUN, "control0 = _control(models, layouts, 1, device, dtype, scale)",
           "control0 = _control(models, layouts, 2, device, dtype, scale)",
           "C_0's ControlNet image drives the inversion and the mask's reference"),
    # -- Eq. 7: the mask -------------------------------------------------------------------------------------------
    Mutant("ito.eq7-tau-ignored", F_MASK, "return (soft > tau).to(soft.dtype), soft",
           "return (soft > 0.1).to(soft.dtype), soft", "Eq. 7: the threshold tau"),
    Mutant("ito.eq7-first-seed-only", F_MASK, "diff = (eps_edit - eps0).abs().mean(dim=(0, 1), keepdim=True)",
           "diff = (eps_edit[:1] - eps0[:1]).abs().mean(dim=(0, 1), keepdim=True)",
           "Eq. 7: the average over n seeds"),
    Mutant("ito.eq7-c-edit-is-c0", F_MASK,
           "cond = torch.cat([cond0.expand(n, -1, -1), cond_edit.expand(n, -1, -1)])",
           "cond = torch.cat([cond0.expand(n, -1, -1), cond0.expand(n, -1, -1)])",
           "Eq. 7: eps under C_EDIT vs eps under C_0 (text)"),
    Mutant("ito.eq7-control-rows-swapped", F_MASK,
           "half = torch.cat([a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)])",
           "half = torch.cat([b.expand(n, -1, -1, -1), a.expand(n, -1, -1, -1)])",
           "Eq. 7: each batch row's ControlNet image belongs to its own condition"),
    Mutant("ito.eq7-not-smoothed", F_RUN, "tau=tau, sigma=MASK_SIGMA,", "tau=tau, sigma=0.0,",
           "Sec. 4: the mask is Gaussian-smoothed before the threshold"),
    Mutant("ito.mask-replace-ignored", F_RUN, 'if user_lat is not None and inputs.mask_mode == "replace":',
           'if False:', "the user mask replaces the estimate (mode replace)"),
    Mutant("ito.mask-add-ignored", F_RUN, "mask = torch.maximum(mask, user_lat)", "mask = mask",
           "the user mask is added to the estimate (mode add)"),
]
