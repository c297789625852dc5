"""SDEdit's mechanism breakages (Meng et al. 2022: noise the photo to strength * T, denoise with
DDIM and classifier-free guidance towards the prompt; optional masked blending). The start,
the step schedule, CFG and the blending live in engine/core (shared with iEdit and IIR-Net);
each breakage is applied to a private copy and judged by SDEdit's tests."""
from tests.mutants import Mutant

TESTS = ("tests/test_sdedit.py",)
F_RUN = "engine/methods/sdedit.py"
F_BLEND = "engine/core/blended.py"
F_SAMPLE = "engine/core/sampling.py"

MUTANTS = [
    Mutant("sdedit.start-from-pure-noise", F_BLEND, "x = S.add_noise(scheduler, x0b, noise, ts[0])",
           "x = noise * scheduler.init_noise_sigma", "SDEdit: x_t ~ q(x_t | x_0) replaced by pure noise (photo ignored)"),
    Mutant("sdedit.start-at-wrong-level", F_BLEND, "x = S.add_noise(scheduler, x0b, noise, ts[0])",
           "x = S.add_noise(scheduler, x0b, noise, ts[-1])",
           "SDEdit: the photo is noised to the last step's level, not the first step's (strength * T)"),
    Mutant("sdedit.strength-takes-noisiest-steps", F_SAMPLE, "return all_t[steps - n:]", "return all_t[:n]",
           "SDEdit: strength picks the noisiest steps, so sampling never reaches t = 0"),
    Mutant("sdedit.mask-blend-inverted", F_BLEND, "x = S.blend(x, background, mask)",
           "x = S.blend(x, background, 1 - mask)", "masked SDEdit: the input kept inside the mask, edited outside"),
    Mutant("sdedit.mask-dropped", F_RUN, "cfg, log.counter, mask=m,", "cfg, log.counter, mask=None,",
           "masked SDEdit: the mask never reaches the sampler"),
    Mutant("sdedit.mask-background-not-renoised", F_BLEND,
           "background = x0b if last else S.add_noise(scheduler, x0b, noise, S.previous_timestep(scheduler, t))",
           "background = x0b", "masked SDEdit: outside the mask the clean input, not the input noised to the step"),
    Mutant("sdedit.mask-final-blend-noised", F_BLEND, "background = x0b if last else",
           "background = S.add_noise(scheduler, x0b, noise, 0) if last else",
           "masked SDEdit: the last step blends a noised input (no blending at t = 0)"),
    Mutant("sdedit.cfg-ignored", F_RUN, "cond, uncond, cfg, log.counter", "cond, uncond, 1.0, log.counter",
           "CFG: the guidance scale never reaches the sampler"),
    Mutant("sdedit.cfg-halves-swapped", F_SAMPLE, "emb = torch.cat([uncond, cond])", "emb = torch.cat([cond, uncond])",
           "CFG: eps_c + w (eps_u - eps_c), guidance away from the prompt"),
    Mutant("sdedit.cfg-formula-wrong", F_SAMPLE, "eps = eps_u + cfg * (eps_c - eps_u)\n    return",
           "eps = eps_c + cfg * (eps_c - eps_u)\n    return",
           "CFG: eps = eps_u + w (eps_c - eps_u) replaced by another combination"),
    Mutant("sdedit.negative-prompt-ignored", F_RUN, "uncond = S.encode_prompts(sd, [negative])",
           "uncond = S.encode_prompts(sd, [\"\"])", "CFG: the negative prompt is not the unconditional branch"),
]
