"""IIR-Net's mechanism breakages (papers/iir-net.txt, Eq. 3-8; METHODS.md section 3), with the
training-free mode's img2img and blending and the two fixes of issue 14 (fp32 training copies,
iir_net.json read at inference)."""
from tests.mutants import Mutant

TESTS = ("tests/test_iir_net_mechanisms.py", "tests/test_iir_net.py")
F_RUN = "engine/methods/iir_net.py"
F_REM = "engine/core/removal.py"
F_TRAIN = "engine/train/iir_net.py"

MUTANTS = [
    # R(x0), Eq. 4-7
    Mutant("iir_net.eq4-no-gray-in-roi", F_REM, "return m * rgb2gray(x) + x * (1 - m)", "return x",
           "Eq. 4: colour removal (gray inside the RoI) dropped"),
    Mutant("iir_net.eq4-gray-outside-roi", F_REM, "return m * rgb2gray(x) + x * (1 - m)",
           "return (1 - m) * rgb2gray(x) + x * m", "Eq. 4: the RoI mask inverted (gray outside, colour inside)"),
    Mutant("iir_net.eq5-6-slider-k-never-reaches-removal", F_RUN,
           "x_k = removal_image(x, m, noise_k, eps_img, scheduler.alphas_cumprod)",
           "x_k = removal_image(x, m, 0, eps_img, scheduler.alphas_cumprod)",
           "Eq. 5-6: the user's noise level k never reaches x'_k"),
    Mutant("iir_net.eq5-6-noise-weights-swapped", F_REM,
           "noised = a.sqrt() * x0p + (1 - a).sqrt() * noise.to(x0p.device, x0p.dtype)",
           "noised = (1 - a).sqrt() * x0p + a.sqrt() * noise.to(x0p.device, x0p.dtype)",
           "Eq. 5-6: sqrt(abar_k) and sqrt(1 - abar_k) swapped (k = 0 gives pure noise)"),
    Mutant("iir_net.eq5-6-noise-outside-roi", F_REM, "return m * noised + (1 - m) * x0p", "return noised",
           "Eq. 5-6: texture noise applied outside the RoI too (the text-irrelevant content erased)"),
    Mutant("iir_net.eq7-edges-dropped", F_REM, "return torch.cat([x_k, edges], dim=1)",
           "return torch.cat([x_k, torch.zeros_like(edges)], dim=1)", "Eq. 7: the Canny channel C(x0) is empty"),
    # trained mode, Eq. 3
    Mutant("iir_net.eq3-trained-reads-raw-photo", F_RUN, "r_x0 = condition(x_k, edges).to(device)",
           "r_x0 = condition(x, edges).to(device)", "Eq. 3: the ControlNet reads the raw photo instead of R(x0)"),
    Mutant("iir_net.eq3-trained-controlnet-scale-0", F_RUN, "control = S.Control([controlnet], [r_x0], [1.0])",
           "control = S.Control([controlnet], [r_x0], [0.0])", "Eq. 3: tau_theta2(R(x0)) never reaches the UNet"),
    # training-free mode
    Mutant("iir_net.free-canny-controlnet-scale-0", F_RUN, "control = S.Control([canny_net], [edges_rgb], [1.0])",
           "control = S.Control([canny_net], [edges_rgb], [0.0])",
           "training-free: the Canny ControlNet (C(x0)) never reaches the UNet"),
    Mutant("iir_net.free-background-not-kept", F_RUN,
           "uncond, cfg, control, log, keep=(z0, m_lat, noise))", "uncond, cfg, control, log, keep=None)",
           "training-free: latents outside the RoI not blended back from the input"),
    Mutant("iir_net.free-final-blend-noised", F_RUN,
           "background = z0 if last else S.add_noise(", "background = S.add_noise(scheduler, z0, noise, 0) if last else S.add_noise(",
           "training-free: the last step blends a noised input, not the input itself"),
    Mutant("iir_net.free-starts-from-photo", F_RUN, "x = S.add_noise(scheduler, z_removal, noise, ts[0])",
           "x = S.add_noise(scheduler, z0, noise, ts[0])",
           "training-free: img2img starts from the photo, not the removal image x'_k"),
    Mutant("iir_net.free-strength-ignores-k", F_RUN, "strength = strength_for(noise_k)", "strength = strength_for(0)",
           "training-free: the img2img strength does not grow with k"),
    # training, Eq. 8 and Sec. 3.2
    Mutant("iir_net.train-k-always-0", F_TRAIN,
           "k = torch.cat([torch.randint(0, args.max_noise + 1, (1,), generator=g) for g in gens])",
           "k = torch.cat([0 * torch.randint(0, args.max_noise + 1, (1,), generator=g) for g in gens])",
           "Sec. 3.2: k drawn at random per sample; always 0"),
    Mutant("iir_net.train-k-ignores-max-noise", F_TRAIN,
           "k = torch.cat([torch.randint(0, args.max_noise + 1, (1,), generator=g) for g in gens])",
           "k = torch.cat([torch.randint(0, MAX_NOISE + 1, (1,), generator=g) for g in gens])",
           "Sec. 3.2: k drawn from 0..1000 whatever --max-noise (K) says"),
    Mutant("iir_net.eq8-target-is-z0", F_TRAIN, "return z_t, t.to(device), emb, r.to(device), noise",
           "return z_t, t.to(device), emb, r.to(device), z0", "Eq. 8: the target is x (z0), not eps"),
    Mutant("iir_net.eq8-loss-against-z_t", F_TRAIN, "return F.mse_loss(eps.float(), noise.float())",
           "return F.mse_loss(eps.float(), z_t.float())", "Eq. 8: the loss compares eps_theta with z_t, not eps"),
    Mutant("iir_net.eq8-train-condition-raw-photo", F_TRAIN,
           "r = condition(removal_image(x, m, k, r_noise, alphas), edges)",
           "r = condition(x + 0 * removal_image(x, m, k, r_noise, alphas), edges)",
           "Eq. 8: training conditions on the raw photo instead of R(x0) (the identity mapping)"),
    # issue 14 fixes
    Mutant("iir_net.fix-fp16-cache-no-fp32-copy", F_TRAIN, "unet = training_unet(sd.unet, use_amp)", "unet = sd.unet",
           "training without autocast on an fp16 cache needs its own fp32 UNet"),
    Mutant("iir_net.fix-iir-json-ignored", F_RUN,
           "max_noise, low, high, settle_notes = settle(noise_k, low, high, trained, checkpoint)",
           "max_noise, low, high, settle_notes = settle(noise_k, low, high, None, checkpoint)",
           "K and the Canny thresholds of iir_net.json ignored at inference"),
    # issue 18: the photo's VAE encode skipped only where the RoI is the whole image
    Mutant("iir_net.whole-image-encodes-the-photo", F_RUN,
           "z0 = None if bool((m >= 1).all()) else S.encode_image(sd, image)", "z0 = S.encode_image(sd, image)",
           "a whole-image RoI still encodes the photo, whose latents enter only blends of weight 0"),
    Mutant("iir_net.masked-roi-skips-the-photo", F_RUN,
           "z0 = None if bool((m >= 1).all()) else S.encode_image(sd, image)", "z0 = None",
           "a partial RoI without the photo's latents: the background outside it is not kept"),
]
