"""iEdit's mechanism breakages (papers/iedit.txt: Sec. 3.1 pairs, Eq. 2-12 training, Sec. 4.1
alternate blocks, Eq. 13 masked inference; METHODS.md section 5)."""
from tests.mutants import Mutant

RUN_TESTS = ("tests/test_iedit_run.py", "tests/test_iedit.py")
TRAIN_TESTS = ("tests/test_iedit_train.py",)
PAIR_TESTS = ("tests/test_iedit.py",)
TESTS = RUN_TESTS + TRAIN_TESTS

F_RUN = "engine/methods/iedit.py"
F_BLEND = "engine/core/blended.py"
F_TRAIN = "engine/train/iedit.py"
F_DATA = "engine/train/iedit_data.py"
F_ACCEL = "engine/train/accel.py"  # the pairs of each step (global_indices)
F_SWAP = "engine/train/word_swap.py"
F_PAIRS = "engine/train/iedit_pairs.py"
F_CLIP = "engine/core/clip.py"
F_CKPT = "engine/core/unet_checkpoint.py"

CALL = "x = masked_sdedit(unet, scheduler, x0, noise, cond, uncond, m, steps, strength, cfg,"
LOSS = "total = (1 - w) * (l_loc + l_global) + w * l_mask + lambda_perc * l_perc"
FG = "fg = ((eps2 * p.m2_lat - eps * p.m2_lat) ** 2).mean()"
BG = "bg = ((eps1 * (1 - p.m1_lat) - eps * (1 - p.m1_lat)) ** 2).mean()"
SWAP = "edited = tokens[:i] + [pre + _cased(new, word) + post] + tokens[i + 1:]"

MUTANTS = [
    # -- inference: masked SDEdit (Eq. 2 start, Eq. 13 blend), CFG, 4 results, mask, checkpoint ---------------
    Mutant("iedit.run-ignores-mask", F_RUN, CALL, CALL.replace(" m, ", " torch.ones_like(m), "),
           "Eq. 13: run blends with its mask M (an all-ones mask = no blending)", tests=RUN_TESTS),
    Mutant("iedit.eq13-background-unnoised", F_BLEND,
           "background = x0b if last else S.add_noise(scheduler, x0b, noise, S.previous_timestep(scheduler, t))",
           "background = x0b", "Eq. 13: the background is z_t, the input noised to the step", tests=RUN_TESTS),
    Mutant("iedit.eq13-background-wrong-level", F_BLEND,
           "S.add_noise(scheduler, x0b, noise, S.previous_timestep(scheduler, t))",
           "S.add_noise(scheduler, x0b, noise, t)", "Eq. 13: z_t at the level the step reached", tests=RUN_TESTS),
    Mutant("iedit.eq13-blend-only-at-the-end", F_BLEND, "if mask is not None:\n",
           "if mask is not None and i == len(ts) - 1:\n", "Eq. 13: blend after every DDIM step", tests=RUN_TESTS),
    Mutant("iedit.sampling-ratio-ignored", F_RUN, "S.sdedit_timesteps(scheduler, steps, strength, x0.device)",
           "S.sdedit_timesteps(scheduler, steps, 1.0, x0.device)",
           "Eq. 2 / Sec. 3.4: SDEdit starts at the sampling ratio", tests=RUN_TESTS),
    Mutant("iedit.results-share-noise", F_RUN,
           "noise = S.randn((n,) + tuple(x0.shape[1:]), gen, device, x0.dtype)",
           "noise = S.randn((1,) + tuple(x0.shape[1:]), gen, device, x0.dtype).expand(n, -1, -1, -1)",
           "Sec. 4.1: 4 results, one noise draw each", tests=RUN_TESTS),
    Mutant("iedit.cfg-dropped", F_RUN, CALL, CALL.replace("strength, cfg,", "strength, 1.0,"),
           "Sec. 4.1: classifier-free guidance 7.5", tests=RUN_TESTS),
    Mutant("iedit.edit-prompt-not-fed", F_RUN, "cond = S.encode_prompts(sd, [prompt])",
           'cond = S.encode_prompts(sd, [""])', "Eq. 13 sampling is conditioned on the edit prompt", tests=RUN_TESTS),
    Mutant("iedit.checkpoint-not-used", F_RUN, 'unet, mode = loaded.unet, "fine-tuned"',
           'unet, mode = sd.unet, "fine-tuned"', "Sec. 3.3: inference runs the fine-tuned UNet", tests=RUN_TESTS),
    Mutant("iedit.lora-not-fused", F_CKPT, 'model.fuse_lora(adapter_names=["iedit"])', "pass",
           "a LoRA checkpoint changes the UNet it runs", tests=RUN_TESTS),
    Mutant("iedit.clipseg-wrong-term", F_RUN, 'SG.clipseg_mask(models.get("clipseg"), image, term)',
           'SG.clipseg_mask(models.get("clipseg"), image, inputs.prompt)',
           "Sec. 3.4: M from CLIPSeg for the edit term", tests=RUN_TESTS),
    Mutant("iedit.clipseg-threshold-ignored", F_RUN, "mask = MK.binarize(soft, threshold)",
           "mask = MK.binarize(soft, 0.5)", "M: CLIPSeg probability above the user's threshold", tests=RUN_TESTS),

    # -- training: Eq. 2-12 -----------------------------------------------------------------------------------
    Mutant("iedit.eq2-zt-from-target", F_TRAIN, "z_t = a_t.sqrt() * p.z1 + (1 - a_t).sqrt() * eps1",
           "z_t = a_t.sqrt() * p.z2 + (1 - a_t).sqrt() * eps1", "Eq. 2: z_t noises the source z_1",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq3-eps2-from-source", F_TRAIN, "eps2 = (z_t - a_t.sqrt() * p.z2)", "eps2 = (z_t - a_t.sqrt() * p.z1)",
           "Eq. 3: eps_2 reconstructs the target z_2", tests=TRAIN_TESTS),
    Mutant("iedit.eq9-fg-target-eps1", F_TRAIN, FG, FG.replace("eps2 *", "eps1 *"),
           "Eq. 9: the foreground target is eps_2 inside M_2", tests=TRAIN_TESTS),
    Mutant("iedit.eq9-bg-target-eps2", F_TRAIN, BG, BG.replace("eps1 *", "eps2 *"),
           "Eq. 9: the background target is eps_1 outside M_1", tests=TRAIN_TESTS),
    Mutant("iedit.eq9-fg-mask-m1", F_TRAIN, FG, FG.replace("m2_lat", "m1_lat"),
           "Eq. 9: the foreground is M_2, the target's mask", tests=TRAIN_TESTS),
    Mutant("iedit.eq9-bg-mask-not-inverted", F_TRAIN, BG, BG.replace("(1 - p.m1_lat)", "p.m1_lat"),
           "Eq. 9: the background is the inverse mask 1 - M_1", tests=TRAIN_TESTS),
    Mutant("iedit.eq4-unet-not-on-edit-prompt", F_TRAIN, 'y2=S.encode_prompts(sd, [item["edit_prompt"]]).float()',
           'y2=S.encode_prompts(sd, [""]).float()', "Eq. 4/9: eps_theta(z_t, t, tau(y_2)) is conditioned on y_2",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq7-no-denoising", F_TRAIN, "z1_hat = (z_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()",
           "z1_hat = z_t", "Eq. 7: x^_1 decodes the predicted clean latent", tests=TRAIN_TESTS),
    Mutant("iedit.eq10-perc-unmasked", F_TRAIN, "perceptual_loss(vgg, _masked(x1_hat, p.m1), _masked(p.x2, p.m2))",
           "perceptual_loss(vgg, x1_hat, p.x2)", "Eq. 10: V(x^_1 * M_1) against V(x_2 * M_2)", tests=TRAIN_TESTS),
    Mutant("iedit.eq11-loc-wrong-text", F_TRAIN, "_masked(x1_hat, p.m1)), p.clip_y2_diff)",
           "_masked(x1_hat, p.m1)), p.clip_y2)", "Eq. 11: L_loc compares with y_2^diff", tests=TRAIN_TESTS),
    Mutant("iedit.eq11-loc-unmasked", F_TRAIN, "CL.embed_pixels(clip, _masked(x1_hat, p.m1))",
           "CL.embed_pixels(clip, x1_hat)", "Eq. 11: L_loc sees x^_1 * M_1 only", tests=TRAIN_TESTS),
    Mutant("iedit.eq12-reduced-to-mask", F_TRAIN, LOSS, "total = l_mask", "Eq. 12: the loss is not L_mask alone",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq12-weights-swapped", F_TRAIN, "w = t / T", "w = 1 - t / T",
           "Eq. 12: (1 - t/T) on the CLIP losses, t/T on L_mask", tests=TRAIN_TESTS),
    Mutant("iedit.eq12-global-dropped", F_TRAIN, "(l_loc + l_global)", "l_loc", "Eq. 12: L_global (Eq. 5) is in the loss",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq12-loc-dropped", F_TRAIN, "(l_loc + l_global)", "l_global", "Eq. 12: L_loc (Eq. 11) is in the loss",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq12-perc-dropped", F_TRAIN, " + lambda_perc * l_perc", "", "Eq. 12: lambda_perc L_perc is in the loss",
           tests=TRAIN_TESTS),
    Mutant("iedit.eq12-wrong-loss-backpropagated", F_TRAIN, 'accelerator.backward(losses["loss"] / micro_count)',
           'accelerator.backward(losses["mask"] / micro_count)',
           "Eq. 12: the update follows the gradient of the whole loss", tests=TRAIN_TESTS),
    Mutant("iedit.masks-swapped", F_TRAIN, "m1, m2 = m1[None].float(), m2[None].float()",
           "m1, m2 = m2[None].float(), m1[None].float()", "Eq. 9-11: M_1 is the source's mask, M_2 the target's",
           tests=TRAIN_TESTS),
    Mutant("iedit.z2-from-source", F_TRAIN, "z2 = _encode(sd, x2)", "z2 = _encode(sd, x1)",
           "Eq. 3: z_2 = E(x_2), the pseudo-target", tests=TRAIN_TESTS),
    Mutant("iedit.no-alternation", F_TRAIN, "if name != active:", "if False:",
           "Sec. 4.1: input and middle blocks updated alternately", tests=TRAIN_TESTS),
    Mutant("iedit.input-blocks-only", F_TRAIN, 'active = "input" if step % 2 == 0 else "middle"', 'active = "input"',
           "Sec. 4.1: the middle block gets its turn", tests=TRAIN_TESTS),
    Mutant("iedit.loader-materialises-all-pairs", F_TRAIN, "for i in range(min(EVAL_PAIRS, len(dataset)))",
           "for i in range(len(dataset))", "issue 14 fix: pairs stream from disk, memory flat in the pair count",
           tests=TRAIN_TESTS),
    Mutant("iedit.loader-same-pair-every-step", F_ACCEL, "out.append(int(perm[p % n]))",
           "out.append(0)", "training draws a pair per step from the whole set",
           tests=TRAIN_TESTS + ("tests/test_accel_unit.py",)),

    # -- pairs (Sec. 3.1) -----------------------------------------------------------------------------------------
    Mutant("iedit.swap-changes-zero-words", F_SWAP, SWAP, "edited = list(tokens)",
           "Sec. 3.1: the edit prompt swaps exactly one word", tests=PAIR_TESTS),
    Mutant("iedit.swap-changes-two-words", F_SWAP, SWAP,
           "edited = tokens[:i] + [pre + _cased(new, word) + post] + [new] + tokens[i + 2:]",
           "Sec. 3.1: the edit prompt swaps exactly one word", tests=PAIR_TESTS),
    Mutant("iedit.retrieval-ignores-edit-prompt", F_CLIP, "F.normalize((image_emb + text_emb) / 2.0, dim=-1)",
           "F.normalize(image_emb, dim=-1)", "Sec. 3.1: query = mean of image and edit-prompt embeddings",
           tests=PAIR_TESTS),
    Mutant("iedit.retrieval-query-unused", F_PAIRS, "query = retrieval_query(image_emb[sources], text_emb)",
           "query = image_emb[sources]", "Sec. 3.1: retrieval by the mean embedding", tests=PAIR_TESTS),
    Mutant("iedit.retrieval-may-pick-source", F_PAIRS, "if j == i or h == hashes[i]:", "if False:",
           "Sec. 3.1: the pseudo-target is another image", tests=PAIR_TESTS),
]
