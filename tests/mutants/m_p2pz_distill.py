"""pix2pix-zero distillation's mechanism breakages (papers/pix2pix-zero.txt, Sec. 4.5 and Appendix A:
the pairs' two filters, the reconstruction + adversarial objective, the augmentation, the training
loop and its split over processes), each with the tests in tests/test_p2pz_distill_train.py that
are meant to kill it."""
from tests.mutants import Mutant

F = "tests/test_p2pz_distill_train.py::"
TESTS = ("tests/test_p2pz_distill_train.py",)
PAIRS = "engine/train/p2pz_pairs.py"
TRAIN = "engine/train/p2pz_distill.py"
GEN = "engine/methods/p2pz_generator.py"
FILTERS = (F + "test_filter_scores_are_iou_and_clip_gain", F + "test_filter_decision_uses_both_thresholds")
OBJECTIVE = (F + "test_generator_objective_is_l1_lpips_and_nonsaturating_adv",
             F + "test_discriminator_objective_is_logistic")
AUGMENT = (F + "test_augmentation_keeps_the_pair_aligned", F + "test_augmentation_varies")
TRAINING = (F + "test_training_losses_fall", F + "test_overfitting_four_pairs_approaches_the_teacher")
CROP = """    top = int(torch.randint(0, h - resolution + 1, (1,), generator=g))  # random crop, one window for both
    left = int(torch.randint(0, w - resolution + 1, (1,), generator=g))"""

MUTANTS = [
    # -- Appendix A, paired dataset collection: the two filters ------------------------------------------
    Mutant("p2pz_distill.overlap-comparison-flipped", PAIRS, "elif min_overlap > 0 and overlap < min_overlap:",
           "elif min_overlap > 0 and overlap > min_overlap:",
           "App. A: pairs with a HIGH segmentation overlap dropped (test_filter_decision_uses_both_thresholds)", FILTERS),
    Mutant("p2pz_distill.gain-comparison-flipped", PAIRS, 'if record["clip_gain"] < min_clip_gain:',
           'if record["clip_gain"] > min_clip_gain:',
           "App. A: pairs that gain CLIP similarity dropped (test_filter_decision_uses_both_thresholds)", FILTERS),
    Mutant("p2pz_distill.overlap-not-iou", PAIRS,
           "return float(np.logical_and(a, b).sum() / union) if union else 0.0",
           "return float(np.logical_and(a, b).sum() / max(1, min(a.sum(), b.sum())))",
           "overlap = intersection over the smaller mask, not IoU (test_filter_scores_are_iou_and_clip_gain)", FILTERS),
    Mutant("p2pz_distill.overlap-target-mask-on-input", PAIRS,
           "m_out = segment_mask(models, segmenter, edited, target, mask_threshold)",
           "m_out = segment_mask(models, segmenter, photo, target, mask_threshold)",
           "the target word's mask taken on the input, not the edit (test_filter_scores_are_iou_and_clip_gain)",
           FILTERS),
    Mutant("p2pz_distill.clip-gain-sign", PAIRS, "return cos_edit - cos_input, cos_input, cos_edit",
           "return cos_input - cos_edit, cos_input, cos_edit",
           "CLIP increase measured input minus edit (test_filter_scores_are_iou_and_clip_gain)", FILTERS),
    # -- Appendix A, fast GAN training: L1 + VGG-LPIPS, plus the non-saturating GAN loss ---------------------
    Mutant("p2pz_distill.lpips-dropped", TRAIN, "recon = l1_weight * l1 + lpips_weight * lp", "recon = l1_weight * l1",
           "App. A: the LPIPS term left out of the reconstruction objective "
           "(test_generator_objective_is_l1_lpips_and_nonsaturating_adv)", OBJECTIVE),
    Mutant("p2pz_distill.adv-saturating", TRAIN, "adv = F.softplus(-d_fake.float()).mean()",
           "adv = -F.softplus(d_fake.float()).mean()",
           "the saturating log(1 - D(G(x))) generator loss instead of the non-saturating one "
           "(test_generator_objective_is_l1_lpips_and_nonsaturating_adv)", OBJECTIVE),
    Mutant("p2pz_distill.d-real-fake-swapped", TRAIN,
           "return F.softplus(-d_real.float()).mean() + F.softplus(d_fake.float()).mean()",
           "return F.softplus(d_real.float()).mean() + F.softplus(-d_fake.float()).mean()",
           "D trained to call the teacher's edits fake (test_discriminator_objective_is_logistic)", OBJECTIVE),
    # -- Appendix A augmentation: the same crop and colours on both, noise on the input -------------------
    Mutant("p2pz_distill.crop-not-on-target", TRAIN, "    y = y[:, top:top + resolution, left:left + resolution]\n",
           "    y = y[:, :resolution, :resolution]\n",
           "the target keeps the top-left window while the input is cropped at random "
           "(test_augmentation_keeps_the_pair_aligned)", AUGMENT),
    Mutant("p2pz_distill.colour-on-input-only", TRAIN, "    y = colour((y + 1) / 2, **draws) * 2 - 1\n", "",
           "colour jitter on the input but not the target (test_augmentation_keeps_the_pair_aligned)", AUGMENT),
    Mutant("p2pz_distill.noise-on-target", TRAIN,
           "x = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)",
           "y = (y + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)",
           "noise added to the target instead of the input (test_augmentation_keeps_the_pair_aligned)", AUGMENT),
    Mutant("p2pz_distill.no-random-crop", TRAIN, CROP,
           "    top, left = (h - resolution) // 2, (w - resolution) // 2",
           "App. A: random crops become centre crops (test_augmentation_varies)", AUGMENT),
    Mutant("p2pz_distill.no-colour-jitter", TRAIN,
           'draws = {k: _uniform(g, 1 - v, 1 + v) if k != "hue" else _uniform(g, -v, v) for k, v in JITTER.items()}',
           'draws = {k: _uniform(g, 1.0, 1.0) if k != "hue" else _uniform(g, 0.0, 0.0) for k, v in JITTER.items()}',
           "App. A: no brightness / contrast / saturation / hue jitter (test_augmentation_varies)", AUGMENT),
    # -- the training loop ------------------------------------------------------------------------------
    Mutant("p2pz_distill.generator-never-stepped", TRAIN, "            opt_g.step()\n", "",
           "the generator's optimiser never steps (test_training_losses_fall)", TRAINING),
    Mutant("p2pz_distill.reconstruct-the-input", TRAIN,
           "losses = generator_losses(fake, y, d_plain(x, fake), lpips_net,",
           "losses = generator_losses(fake, x, d_plain(x, fake), lpips_net,",
           "the reconstruction target is the input photo, not the teacher's edit "
           "(test_training_losses_fall, test_overfitting_four_pairs_approaches_the_teacher)", TRAINING),
    Mutant("p2pz_distill.clamp-in-training", GEN, "return out if self.training else out.clamp(-1, 1)",
           "return out.clamp(-1, 1)",
           "the generator's output clamped in training: overshooting pixels get no gradient "
           "(test_training_losses_fall, test_overfitting_four_pairs_approaches_the_teacher)", TRAINING),
    Mutant("p2pz_distill.batch-not-split", TRAIN,
           "loader = iter(accel.step_loader(data, a.seed, start, a.steps, a.batch // world, 1, accelerator, a.workers))",
           "loader = iter(accel.step_loader(data, a.seed, start, a.steps, a.batch, 1, accelerator, a.workers))",
           "App. A batch 64 is the global batch: each process takes the whole batch instead of its share "
           "(test_two_process_training)", (F + "test_two_process_training",)),
]
