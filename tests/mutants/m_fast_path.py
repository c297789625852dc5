"""The GPU fast path's breakages (issue 18): a read of a device value inside a step loop, which makes
the host wait for the device at every step (killed by tests/test_no_host_sync.py, which counts
tensor->Python conversions per line at two loop lengths); channels-last asked for and not applied;
attention layers off SDPA where no probabilities are needed (tests/test_fast_path.py)."""
from tests.mutants import Mutant

TESTS = ("tests/test_no_host_sync.py", "tests/test_fast_path.py")
FP = "tests/test_fast_path.py::"
F = "tests/test_no_host_sync.py::test_step_loops_do_not_wait_for_the_device"

MUTANTS = [
    Mutant("fast_path.alpha-bar-int", "engine/core/sampling.py",
           "    if isinstance(t, torch.Tensor):\n        return _alpha_table(scheduler, t.device)[(t.long() + 1).clamp_min(0)]\n",
           "",
           "alpha_t looked up with int(t) of a device timestep, every DDIM step (all methods)",
           (F + "[sdedit]", F + "[iir-net]")),
    Mutant("fast_path.previous-timestep-int", "engine/core/sampling.py",
           "    return t - gap if isinstance(t, torch.Tensor) else int(t) - gap",
           "    return int(t) - gap",
           "the next timestep as int(t) of a device timestep, every DDIM step", (F + "[sdedit]", F + "[iedit]")),
    Mutant("fast_path.ito-loss-float", "engine/core/ito_optim.py",
           "            losses[name] = loss.detach()  #",
           "            losses[name] = float(loss.detach())  #",
           "ITO's Eq. 6 losses read per Adam step", (F + "[ito]",)),
    Mutant("fast_path.layered-item", "engine/core/layered_training.py",
           "            report(i, l_obj.detach(), l_bg.detach())",
           "            report(i, l_obj.item(), l_bg.item())",
           "LayerDiffusion's Eq. 4-5 losses read per fine-tuning step", (F + "[layer-diffusion]",)),
    Mutant("fast_path.p2pz-xa-float", "engine/methods/pix2pix_zero.py",
           "            curves[\"xa_loss\"].append(sink.loss.detach())",
           "            curves[\"xa_loss\"].append(float(sink.loss))",
           "pix2pix-zero's L_xa (Eq. 5) read per edit step", (F + "[pix2pix-zero]",)),
    Mutant("fast_path.autocorr-record-float", "engine/core/autocorr.py",
           "                record(i, full_pair_loss(eta).sum(), kl_loss(eta).sum())",
           "                record(i, float(full_pair_loss(eta).sum()), float(kl_loss(eta).sum()))",
           "pix2pix-zero's L_pair / L_KL (Eq. 3) read per inversion step", (F + "[pix2pix-zero]",)),
    Mutant("fast_path.channels-last-ignored", "engine/models.py",
           "                if self.channels_last:\n                    to_channels_last(model)\n", "",
           "--channels-last on (or a GPU) leaves the weights in NCHW order",
           (FP + "test_channels_last_gives_the_same_edit",)),
    Mutant("fast_path.probes-on-self-attention", "engine/core/attention.py",
           'return name.endswith("attn2.processor")', 'return name.endswith(".processor")',
           "pix2pix-zero computes explicit softmax(QK^T) in self-attention too, which Eq. 5 never reads",
           (FP + "test_attention_is_sdpa_unless_its_probabilities_are_needed",)),
    Mutant("fast_path.classic-attention-beside-probes", "engine/core/attention.py",
           "(CrossAttentionProbe(name, sink) if is_cross_attention(name) else proc)",
           "(CrossAttentionProbe(name, sink) if is_cross_attention(name) else "
           "__import__('diffusers.models.attention_processor', fromlist=['x']).AttnProcessor())",
           "self-attention switched to the unfused processor while the probes are in",
           (FP + "test_attention_is_sdpa_unless_its_probabilities_are_needed",)),
    Mutant("fast_path.fp16-vae-nan-kept", "engine/core/sampling.py",
           "    if images.dtype == torch.float16 and not torch.isfinite(images).all():",
           "    if False:",
           "an fp16 VAE decode that overflowed returns its NaNs (a black image)",
           (FP + "test_an_fp16_vae_decode_that_overflows_is_redone_in_fp32_only_then",)),
    Mutant("fast_path.compile-ignored", "engine/models.py",
           "                if self.compile_backend:\n                    compile_parts(model, self.compile_backend)\n", "",
           "--compile asked for and nothing compiled",
           (FP + "test_compile_gives_the_same_edit_and_copies_run_their_own_weights",)),
]
